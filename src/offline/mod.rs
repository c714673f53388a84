//! The offline side: the dataset format and its split, training and evaluation of the
//! complexity model, and the in-process replay that measures routing on recorded outcomes.

pub mod dataset;
pub mod replay;
pub mod training;
