//! Faults as tests: full disks (a real small tmpfs), SIGKILLed and
//! restarted nodes, a master that is stopped, started late or restarted.

mod disk;
mod kill;
mod peers;
