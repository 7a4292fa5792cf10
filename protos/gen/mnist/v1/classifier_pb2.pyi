from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Image(_message.Message):
    __slots__ = ("raw", "encoded", "pixels")
    RAW_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    raw: bytes
    encoded: bytes
    pixels: FloatPixels
    def __init__(self, raw: _Optional[bytes] = ..., encoded: _Optional[bytes] = ..., pixels: _Optional[_Union[FloatPixels, _Mapping]] = ...) -> None: ...

class FloatPixels(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class RawBatch(_message.Message):
    __slots__ = ("data", "count")
    DATA_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    count: int
    def __init__(self, data: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("image", "model_name", "model_version", "return_probabilities", "return_preprocessed")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    RETURN_PREPROCESSED_FIELD_NUMBER: _ClassVar[int]
    image: Image
    model_name: str
    model_version: str
    return_probabilities: bool
    return_preprocessed: bool
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., return_probabilities: _Optional[bool] = ..., return_preprocessed: _Optional[bool] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("raw", "images", "model_name", "model_version", "return_probabilities")
    RAW_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    raw: RawBatch
    images: _containers.RepeatedCompositeFieldContainer[Image]
    model_name: str
    model_version: str
    return_probabilities: bool
    def __init__(self, raw: _Optional[_Union[RawBatch, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., return_probabilities: _Optional[bool] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "confidence", "probabilities")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    label: int
    confidence: float
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, label: _Optional[int] = ..., confidence: _Optional[float] = ..., probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("prediction", "model_name", "model_version", "preprocessed")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSED_FIELD_NUMBER: _ClassVar[int]
    prediction: Prediction
    model_name: str
    model_version: str
    preprocessed: bytes
    def __init__(self, prediction: _Optional[_Union[Prediction, _Mapping]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., preprocessed: _Optional[bytes] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("labels", "probabilities", "confidences", "count", "model_name", "model_version", "errors")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    labels: bytes
    probabilities: bytes
    confidences: bytes
    count: int
    model_name: str
    model_version: str
    errors: _containers.RepeatedCompositeFieldContainer[ItemError]
    def __init__(self, labels: _Optional[bytes] = ..., probabilities: _Optional[bytes] = ..., confidences: _Optional[bytes] = ..., count: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., errors: _Optional[_Iterable[_Union[ItemError, _Mapping]]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("index", "code", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    code: str
    message: str
    def __init__(self, index: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
