//! Path of the built test guest.
