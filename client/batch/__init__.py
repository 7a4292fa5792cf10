"""The batch tool behind ``mnist-classify``: sources, the job, outputs, backends, Ray.

It needs the ``[client]`` extra (tqdm, pyarrow for Parquet); the library one level up
(``mnist_serving.client``) needs none of that.
"""
