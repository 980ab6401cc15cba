//! PC platform devices a Linux guest expects at their classic addresses.
