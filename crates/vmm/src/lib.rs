//! The vireo VMM library.
