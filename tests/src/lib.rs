//! Integration tests of the service live in `tests/tests/`.
