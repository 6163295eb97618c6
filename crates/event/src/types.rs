//! Event type names. They follow the naming of the platform whose deployment
//! contract Picket implements, so rules written for it read the same here.

pub const CONNECTED: &str = "CONNECTED";
pub const STARTING_UP: &str = "STARTING_UP";
pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
pub const DATA_DROPPED: &str = "DATA_DROPPED";

pub const NEW_PROCESS: &str = "NEW_PROCESS";
pub const EXISTING_PROCESS: &str = "EXISTING_PROCESS";
pub const TERMINATE_PROCESS: &str = "TERMINATE_PROCESS";
pub const CODE_IDENTITY: &str = "CODE_IDENTITY";

pub const FILE_CREATE: &str = "FILE_CREATE";
pub const FILE_DELETE: &str = "FILE_DELETE";
pub const FILE_MODIFIED: &str = "FILE_MODIFIED";
pub const FILE_RENAME: &str = "FILE_RENAME";

pub const NETWORK_CONNECTIONS: &str = "NETWORK_CONNECTIONS";
pub const NEW_TCP4_CONNECTION: &str = "NEW_TCP4_CONNECTION";
pub const NEW_TCP6_CONNECTION: &str = "NEW_TCP6_CONNECTION";
pub const TERMINATE_TCP4_CONNECTION: &str = "TERMINATE_TCP4_CONNECTION";
pub const TERMINATE_TCP6_CONNECTION: &str = "TERMINATE_TCP6_CONNECTION";
pub const NEW_UDP4_CONNECTION: &str = "NEW_UDP4_CONNECTION";
pub const NEW_UDP6_CONNECTION: &str = "NEW_UDP6_CONNECTION";
pub const DNS_REQUEST: &str = "DNS_REQUEST";
pub const NETSTAT_REP: &str = "NETSTAT_REP";

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
