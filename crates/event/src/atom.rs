//! Atoms: 32-hex identifiers that link events. A child's `routing/parent`
//! equals its parent's `routing/this`.
//!
//! Process atoms are derived from the host boot id, the pid and the process
//! start time (clock ticks since boot). So the same process gets the same atom
//! from every tier and across sensor restarts, and a reused pid gets a new one.

use sha2::{Digest, Sha256};

/// Atom of the process `(pid, start_ticks)` on the boot `boot_id`.
pub fn process_atom(boot_id: &str, pid: u32, start_ticks: u64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(boot_id.as_bytes());
    hasher.update(pid.to_le_bytes());
    hasher.update(start_ticks.to_le_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// Generates a random atom, for events that are not tied to a process.
pub fn random_atom() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_atom_is_stable_and_distinct() {
        let a = process_atom("boot", 42, 1000);
        assert_eq!(a.len(), 32);
        assert_eq!(a, process_atom("boot", 42, 1000));
        assert_ne!(a, process_atom("boot", 42, 1001));
        assert_ne!(a, process_atom("other-boot", 42, 1000));
    }
}
