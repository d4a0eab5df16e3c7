//! # plush-core
//!
//! Every Plush protocol as a synchronous, deterministic state machine: no sockets, no clock, no
//! threads, no global RNG. Drivers (the simulator, the mio driver) feed inputs and carry out
//! outputs; the same seed and the same inputs give the same outputs, bit for bit.
//!
//! Map of the crate:
//! - [`node`]: [`Node`], the client: the `handle_*` / `poll_*` contract, [`Output`], [`Event`],
//!   [`Command`], [`Stats`]. It decodes frames and routes them to the protocol of their layer.
//! - [`tree`]: RandTree, the self-repairing random tree (join, redirect, failover, merge, leave,
//!   repair through RanSub candidates).
//! - [`ransub`]: RanSub, uniform random subsets of the membership delivered every epoch.
//! - [`control`]: the control plane inside every client: the controller's link at the root,
//!   invitations, membership reports, jobs whose results are merged on the way up and held until
//!   acknowledged, barriers, dismantle. [`ProcessEvent`] is what a driver reports of a process.
//! - [`transfer`]: files pushed down the tree in chunks: pipelined, flow-controlled per child,
//!   resumed after a repair (the state every node and the controller keep per push job).
//! - [`controller`]: [`Controller`], the user's side, outside the tree: the host table
//!   ([`HostState`]), jobs, barriers, and the [`Report`]s it gives its user.
//! - [`nodeset`]: [`NodeSet`], sets of node ids as runs of consecutive addresses.
//! - [`wire`]: frames, [`wire::Hello`], the messages of every layer, the frame pool.
//! - [`batch`]: batches: the frames of one read that a relay passes on leave as runs, one
//!   buffer per receiver, not one output per frame and receiver.
//! - [`conn`]: the connection table (link states, pins, LRU eviction under a budget, heartbeat
//!   bookkeeping, idle sweep).
//! - [`samples`]: one real message of every kind, for seed corpora and benchmarks.
//! - [`config`]: [`Config`] with the defaults of DESIGN.md.
//! - [`id`], [`time`]: [`NodeId`] (a listen address) and [`Instant`] (microseconds).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod batch;
pub mod bounded;
pub mod config;
pub mod conn;
pub mod contract;
pub mod control;
pub(crate) mod ctx;
pub mod frame;
pub mod id;
pub mod node;
pub mod nodeset;
pub mod ransub;
pub mod samples;
pub mod time;
pub mod tree;
pub mod wire;

pub use config::Config;
pub use contract::{
    Command, CommandError, Event, HostState, InputError, LaunchResult, LinkEvent, Machine, Output, ProcessEvent,
    Report, Stats,
};
pub use control::{controller, transfer};
pub use controller::Controller;
pub use id::NodeId;
pub use node::Node;
pub use nodeset::NodeSet;
pub use time::Instant;
pub use tree::TreeState;
