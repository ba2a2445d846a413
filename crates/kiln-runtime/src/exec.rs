//! Execution of a plan on one GPU.
