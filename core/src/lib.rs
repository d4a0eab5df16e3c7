//! # plush-core
//!
//! Every Plush protocol as a synchronous, deterministic state machine: no sockets, no clock, no
//! threads, no global RNG. Drivers (the simulator, the mio driver) feed inputs and carry out
//! outputs; the same seed and the same inputs give the same outputs, bit for bit.
//!
//! ## Layers
//!
//! Each module imports only from the layers below it (`tests/layers.rs` fails on a cycle):
//!
//! ```text
//! node, control::controller   the two machines a driver runs
//! control                     the control plane: jobs, results, barriers, census, linger
//! tree                        RandTree: join, failover, repair, merge
//! ransub, control::transfer   random subsets; file pushes
//! ctx                         what a protocol handler sends and reports through
//! batch, conn                 relayed runs; the link table
//! contract                    what a driver sees: Machine, Output, Event, Report, errors
//! frame                       length-prefixed frames, the frame pool
//! wire                        the messages of every layer
//! nodeset, bounded, lazy      node sets; lists bounded before allocating; boxed idle state
//! id, time, config            NodeId, Instant, Config
//! ```
//!
//! ## A frame's way in
//!
//! The mio driver reads a link (`plush_mio::driver`: `read_conn`), opens its sealed records
//! (`plush_mio::secure`) and hands the plaintext to [`Machine::handle_frames`]. A [`Node`]
//! ([`node`]) cuts it into frames ([`frame::split_frame`]), decodes each in place
//! ([`wire::Message`]), checks the link ([`conn`]), and hands the message to the protocol of its
//! layer: [`tree`], [`ransub`], or [`control`] (control messages and jobs). That handler sends
//! through its `ctx` and returns; the node then tells the control plane what the tree did and
//! re-arms its timers. The simulator takes the same path from `Machine::handle_frames` on.
//!
//! ## Map of the crate
//! - [`contract`]: [`Machine`], implemented by [`Node`] and [`Controller`]; [`Output`],
//!   [`Event`], [`LinkEvent`], [`Command`], [`Stats`], [`ProcessEvent`], [`Report`],
//!   [`HostState`], and the input errors.
//! - [`node`]: [`Node`], the client. It decodes frames and routes them to the protocol of their
//!   layer, and owns what they share.
//! - `ctx`: the context a protocol handler runs in (sending, relaying, events), and the tree's
//!   news for the control plane.
//! - [`tree`]: RandTree, the self-repairing random tree (join, redirect, failover, merge, leave,
//!   repair through RanSub candidates); `tree/join.rs` and `tree/merge.rs` hold two of its
//!   concerns.
//! - [`ransub`]: RanSub, uniform random subsets of the membership delivered every epoch.
//! - [`control`]: the control plane inside every client, one concern a file: the controller's
//!   link and invitations (`membership`), jobs whose results are merged on the way up
//!   (`jobs`, `held`), barriers, census, dismantle and linger (`lifecycle`). Beside it:
//!   - [`controller`]: [`Controller`], the user's side, outside the tree: the host table
//!     ([`HostState`]), jobs, barriers, and the [`Report`]s it gives its user;
//!   - [`transfer`]: files pushed down the tree in chunks: pipelined, flow-controlled per child,
//!     resumed after a repair.
//! - [`batch`]: the frames of one read that a relay passes on leave as runs, one buffer per
//!   receiver, not one output per frame and receiver.
//! - [`conn`]: the connection table (link states, pins, LRU eviction under a budget, heartbeat
//!   bookkeeping, idle sweep).
//! - [`frame`]: frames on a byte stream, the frame pool; [`wire`]: [`wire::Hello`] and the
//!   messages of every layer; [`bounded`]: lists and fillers whose decoding is bounded.
//! - [`nodeset`]: [`NodeSet`], sets of node ids as runs of consecutive addresses.
//! - [`samples`]: one real message of every kind, for seed corpora and benchmarks.
//! - [`config`]: [`Config`], every tunable, with the defaults of DESIGN.md.
//! - [`id`], [`time`]: [`NodeId`] (a listen address) and [`Instant`] (microseconds).
//!
//! A broken invariant inside a machine is a bug: it is asserted where it can break (in debug
//! and test builds). Bad input from the network is never asserted: it is an [`InputError`], and
//! the driver closes that one link.
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
pub(crate) mod lazy;
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
