use std::fmt;

/// An op refused its arguments or its device failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// A tensor handed to an op does not have the size its shape struct implies.
    Shape {
        op: &'static str,
        tensor: &'static str,
        expected: usize,
        actual: usize,
    },
    /// A shape struct itself is invalid (zero sizes, bad token id, ...).
    Invalid { op: &'static str, message: String },
    /// The device (driver, compiler, launch) failed.
    Device(String),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shape {
                op,
                tensor,
                expected,
                actual,
            } => write!(
                f,
                "{op}: tensor `{tensor}` has {actual} elements, expected {expected}"
            ),
            Self::Invalid { op, message } => write!(f, "{op}: {message}"),
            Self::Device(message) => write!(f, "device error: {message}"),
        }
    }
}

impl std::error::Error for KernelError {}
