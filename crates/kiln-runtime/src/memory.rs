//! The activation memory plan.
