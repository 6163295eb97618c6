//! Event type names. They follow the naming of the platform whose deployment
//! contract Picket implements, so rules written for it read the same here.

/// Defines one constant per event type, named and valued alike, and
/// [`ALL`] listing them, so a type added here is also in the list.
macro_rules! event_types {
    ($($name:ident),+ $(,)?) => {
        $(pub const $name: &str = stringify!($name);)+

        /// Every event type defined here, in declaration order.
        pub const ALL: &[&str] = &[$($name),+];
    };
}

event_types! {
    CONNECTED,
    STARTING_UP,
    SHUTTING_DOWN,
    DATA_DROPPED,

    NEW_PROCESS,
    EXISTING_PROCESS,
    TERMINATE_PROCESS,
    CODE_IDENTITY,

    FILE_CREATE,
    FILE_DELETE,
    FILE_MODIFIED,
    FILE_RENAME,

    NETWORK_CONNECTIONS,
    NEW_TCP4_CONNECTION,
    NEW_TCP6_CONNECTION,
    TERMINATE_TCP4_CONNECTION,
    TERMINATE_TCP6_CONNECTION,
    NEW_UDP4_CONNECTION,
    NEW_UDP6_CONNECTION,
    DNS_REQUEST,
    NETSTAT_REP,
}

/// Keys of the `event/CONTAINER` object carried by every event of a
/// containerised process. Host processes carry no `CONTAINER` key at all.
pub mod container {
    pub const KEY: &str = "CONTAINER";
    pub const ID: &str = "ID";
    pub const NAME: &str = "NAME";
    pub const IMAGE: &str = "IMAGE";
    pub const RUNTIME: &str = "RUNTIME";
    pub const POD_NAME: &str = "POD_NAME";
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    pub const POD_UID: &str = "POD_UID";
    pub const K8S_CONTAINER_NAME: &str = "K8S_CONTAINER_NAME";
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_lists_each_constant_once() {
        assert_eq!(super::NEW_PROCESS, "NEW_PROCESS");
        assert!(super::ALL.contains(&super::NETSTAT_REP));
        let mut sorted = super::ALL.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), super::ALL.len());
    }
}
