//! The `.kiln` engine file.
