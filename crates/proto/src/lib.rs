//! Generated protobuf and gRPC code for Gridwork.
//!
//! Owns: nothing but generated code, one module per protobuf package
//! (`gridwork::<context>::v1`), and the descriptor set for server reflection.
//! Must not depend on: any other Gridwork crate. Hand-written conversions live in
//! the service that owns the API (its `grpc.rs`), never here.
#![allow(clippy::all, missing_docs)]

/// Encoded `FileDescriptorSet` of every Gridwork proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gridwork_descriptor.bin"));

pub mod gridwork {
    pub mod eventstore {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/gridwork.eventstore.v1.rs"));
        }
    }
    pub mod dispatch {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/gridwork.dispatch.v1.rs"));
        }
    }
    pub mod grid {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/gridwork.grid.v1.rs"));
        }
    }
    pub mod intake {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/gridwork.intake.v1.rs"));
        }
    }
    pub mod personal {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/gridwork.personal.v1.rs"));
        }
    }
    pub mod sample {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/gridwork.sample.v1.rs"));
        }
    }
}
