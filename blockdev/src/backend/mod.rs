//! Backends: raw files and qcow2 images over io_uring.
