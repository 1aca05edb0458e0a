//! Which agents are lent to the dispatcher: the idle ones, each lent for
//! one task at a time.

use std::collections::{HashMap, VecDeque};

use crate::message::router::AgentIx;

/// The agents lent to the dispatcher (idle ones): a flag per agent, and per
/// type the lent ones in the order they were lent, so work is spread over
/// them. An agent is in its type's list at most once.
#[derive(Debug)]
pub(crate) struct Lent {
    types: Vec<String>,
    pub(crate) lent: Vec<bool>,
    listed: Vec<bool>,
    by_type: HashMap<String, VecDeque<AgentIx>>,
}

impl Lent {
    pub(crate) fn new(types: &[String]) -> Self {
        Lent {
            types: types.to_vec(),
            lent: vec![false; types.len()],
            listed: vec![false; types.len()],
            by_type: HashMap::new(),
        }
    }

    /// Agents added after the ones known, none of them lent yet.
    pub(crate) fn grow(&mut self, types: &[String]) {
        self.types.extend_from_slice(types);
        self.lent.resize(self.types.len(), false);
        self.listed.resize(self.types.len(), false);
    }

    pub(crate) fn lend(&mut self, i: AgentIx) {
        self.lent[i.0] = true;
        if !self.listed[i.0] {
            self.listed[i.0] = true;
            self.by_type
                .entry(self.types[i.0].clone())
                .or_default()
                .push_back(i);
        }
    }

    pub(crate) fn take_back(&mut self, i: AgentIx) {
        if let Some(f) = self.lent.get_mut(i.0) {
            *f = false;
        }
    }

    /// A lent agent for `target`, now taken back.
    /// `agent` (for a task to it alone) or else a lent agent of
    /// `agent_type`, now taken back.
    pub(crate) fn take_for(&mut self, agent: Option<AgentIx>, agent_type: &str) -> Option<AgentIx> {
        let i = match agent {
            Some(i) => self.lent.get(i.0).copied().unwrap_or(false).then_some(i),
            None => {
                let q = self.by_type.get_mut(agent_type)?;
                let mut found = None;
                while let Some(i) = q.pop_front() {
                    self.listed[i.0] = false;
                    if self.lent[i.0] {
                        found = Some(i);
                        break;
                    }
                }
                found
            }
        }?;
        self.lent[i.0] = false;
        Some(i)
    }
}
