//! From what the agents adopted to the engine's `Input::Resume`: a component is running if its
//! agent adopted it, and what it holds is its own account, given when it registered again.
//! The rule that turns that into assignments is `nines_engine::resume_input`; the engine then
//! keeps what is consistent and removes the rest.

use nines_agent::Adopted;
use nines_engine::Input;

/// The `Resume` input for `adopted` (the rule is the engine's, shared with the simulator).
pub(crate) fn resume_input(adopted: &[Adopted]) -> Input {
    let held: Vec<_> = adopted.iter().map(|a| (a.comp, a.held.clone())).collect();
    nines_engine::resume_input(&held)
}
