//! Typed indices into the model's entity tables.
//!
//! The engine's hot paths (a node failover touching thousands of SIs) index flat vectors instead
//! of hashing names; a distinct type per entity kind keeps an SU index from being used as an SI.

macro_rules! entity_id {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u32);

        impl $name {
            /// Position in the model's table of this kind, for indexing runtime state vectors.
            #[inline]
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
    )*};
}

entity_id!(
    /// A node (a host or a VM that runs an agent).
    NodeId,
    /// An application: a set of SGs and the SIs they protect.
    AppId,
    /// A service group.
    SgId,
    /// A service unit.
    SuId,
    /// A component.
    CompId,
    /// A service instance.
    SiId,
    /// A component service instance.
    CsiId,
);
