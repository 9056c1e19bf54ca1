//! `Serialize` where the derive's shape is not the one the agent prints: bytes as hex or as a
//! list, and DSS in one level, every field of its data ACK and mapping `null` when absent.

use core::fmt;

use serde::{Serialize, Serializer, ser::SerializeStruct as _};

use super::{Dss, OptionBytes};

/// Lowercase hex, for HMACs and opaque payloads.
pub(super) fn hex<S: Serializer>(bytes: &impl AsRef<[u8]>, serializer: S) -> Result<S::Ok, S::Error> {
    struct Hex<'a>(&'a [u8]);
    impl fmt::Display for Hex<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
    serializer.collect_str(&Hex(bytes.as_ref()))
}

/// A list of byte values (REMOVE_ADDR's address IDs).
impl Serialize for OptionBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.as_slice())
    }
}

impl Serialize for Dss {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (ack, mapping) = (self.data_ack, self.mapping);
        let mut s = serializer.serialize_struct("Dss", 9)?;
        s.serialize_field("subtype", "dss")?;
        s.serialize_field("data_fin", &self.data_fin)?;
        s.serialize_field("data_ack", &ack.map(|a| a.value))?;
        s.serialize_field("data_ack_wide", &ack.map(|a| a.wide))?;
        s.serialize_field("dsn", &mapping.map(|m| m.dsn))?;
        s.serialize_field("dsn_wide", &mapping.map(|m| m.dsn_wide))?;
        s.serialize_field("subflow_seq", &mapping.map(|m| m.subflow_seq))?;
        s.serialize_field("data_len", &mapping.map(|m| m.data_len))?;
        s.serialize_field("checksum", &mapping.and_then(|m| m.checksum))?;
        s.end()
    }
}
