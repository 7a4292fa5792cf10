"""Protocol definitions (own API and KServe v2) and their generated stubs."""
