//! dagflow engine
