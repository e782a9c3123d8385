//! Placeholder of the quorum state resolver (replaced by the real one).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumInput {
    pub leader: String,
    pub quorum: usize,
    pub voters: Vec<String>,
    pub numsync: usize,
    pub sync: Vec<String>,
    pub numsync_confirmed: usize,
    pub active: Vec<String>,
    pub sync_wanted: usize,
    pub leader_wanted: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Quorum {
        leader: String,
        quorum: usize,
        voters: Vec<String>,
    },
    Sync {
        numsync: usize,
        names: Vec<String>,
    },
    Restart,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    pub transitions: Vec<Transition>,
    pub warnings: Vec<String>,
}

pub fn resolve(_input: &QuorumInput) -> Resolution {
    Resolution::default()
}
