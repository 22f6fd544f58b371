//! Leg tests with simulated time.
