//! The workload protocol shared by every test program.
