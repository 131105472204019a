//! What the agent tells the kernel to copy of each connection.
//!
//! The kernel looks an instruction up only when the generation counter changed since its
//! connection last looked, and a missing or stale instruction fails safe: the kernel then
//! copies everything the parser could need (up to the undecided budget before the first
//! instruction). So the agent writes an instruction when it changes meaningfully and bumps
//! the generation once per drain of the ring buffer.

use agent_common::{Instruction, MODE_COUNTS_ONLY, MODE_PARSE};

/// A skip window is worth a map update only if it spares at least this many bytes of
/// copying: below it the update costs more than the copy.
pub const MIN_SKIP: u64 = 4096;

/// Where instructions go: the kernel's maps, or a recorder in tests.
pub trait InstructionSink: Send {
    fn set(&mut self, conn_id: u64, instruction: Instruction);
    /// The connection closed.
    fn forget(&mut self, conn_id: u64);
    /// Makes what was set since the last call visible to the kernel.
    fn publish(&mut self);
}

/// What the agent wants copied of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub mode: [u8; 2],
    /// By direction: stream offset up to which nothing needs copying.
    pub skip_until: [u64; 2],
    /// By direction: stream offset the parser has reached (not sent).
    pub fed: [u64; 2],
    /// Whether this is a decision (a default `Wanted` is "nothing said yet").
    pub decided: bool,
}

impl Wanted {
    pub fn parse() -> Self {
        Self {
            mode: [MODE_PARSE; 2],
            decided: true,
            ..Self::default()
        }
    }

    pub fn counts_only() -> Self {
        Self {
            mode: [MODE_COUNTS_ONLY; 2],
            decided: true,
            ..Self::default()
        }
    }

    /// Whether `new` (the current wish) is worth a map update over `self` (the last one
    /// sent).
    pub fn worth_sending(&self, new: &Wanted) -> bool {
        if !new.decided {
            return false;
        }
        if !self.decided || new.mode != self.mode {
            return true;
        }
        (0..2).any(|d| {
            new.mode[d] == MODE_PARSE
                && new.skip_until[d] > self.skip_until[d]
                && new.skip_until[d].saturating_sub(new.fed[d]) >= MIN_SKIP
        })
    }

    pub fn instruction(&self) -> Instruction {
        Instruction {
            skip_until: self.skip_until,
            mode: self.mode,
            _pad: [0; 6],
        }
    }
}

/// Does nothing: for a tracker whose kernel side needs no instructions (tests of counting).
pub struct NoInstructions;

impl InstructionSink for NoInstructions {
    fn set(&mut self, _: u64, _: Instruction) {}
    fn forget(&mut self, _: u64) {}
    fn publish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_sent_once_and_small_skips_not_at_all() {
        let nothing = Wanted::default();
        assert!(!nothing.worth_sending(&Wanted::default()));
        let parse = Wanted::parse();
        assert!(nothing.worth_sending(&parse));
        assert!(!parse.worth_sending(&Wanted::parse()));
        assert!(parse.worth_sending(&Wanted::counts_only()));
        let mut small = Wanted::parse();
        small.fed = [100, 0];
        small.skip_until = [100 + MIN_SKIP - 1, 0];
        assert!(!parse.worth_sending(&small));
        let mut big = small;
        big.skip_until = [100 + MIN_SKIP, 0];
        assert!(parse.worth_sending(&big));
        // The same window again is not news.
        assert!(!big.worth_sending(&big));
        assert!(!Wanted::counts_only().worth_sending(&Wanted::counts_only()));
    }
}
