//! Varbinds as twinrx sees them: one representation for v1 and v2 values, rendered to the
//! stream's JSON (`SCHEMA.md`) and to the canonical bytes a content key hashes.
//!
//! Keys hash this canonical form, not the received BER, because two encodings of one value can
//! differ (long-form lengths, leading zero octets) while the value is the same.

use crate::key::KeyBuilder;
use rasn::types::{Integer, ObjectIdentifier};
use rasn_snmp::{v1, v2};
use serde_json::{json, Value as Json};
use std::fmt::Write as _;

/// A varbind value, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Integer(Integer),
    OctetString(Vec<u8>),
    Oid(String),
    IpAddress([u8; 4]),
    Counter32(u32),
    Gauge32(u32),
    TimeTicks(u32),
    Counter64(u64),
    Opaque(Vec<u8>),
    Null,
    NoSuchObject,
    NoSuchInstance,
    EndOfMibView,
}

/// One variable binding: a dotted OID and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VarBind {
    pub oid: String,
    pub value: Value,
}

/// `1.3.6.1...` from an OID.
pub(crate) fn dotted(oid: &ObjectIdentifier) -> String {
    let mut s = String::with_capacity(oid.len() * 3);
    for (i, arc) in oid.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        // Writing to a String cannot fail.
        let _ = write!(s, "{arc}");
    }
    s
}

impl Value {
    /// The stream's type name (SCHEMA.md).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Integer(_) => "INTEGER",
            Value::OctetString(_) => "OCTET STRING",
            Value::Oid(_) => "OBJECT IDENTIFIER",
            Value::IpAddress(_) => "IpAddress",
            Value::Counter32(_) => "Counter32",
            Value::Gauge32(_) => "Gauge32",
            Value::TimeTicks(_) => "TimeTicks",
            Value::Counter64(_) => "Counter64",
            Value::Opaque(_) => "Opaque",
            Value::Null => "NULL",
            Value::NoSuchObject => "noSuchObject",
            Value::NoSuchInstance => "noSuchInstance",
            Value::EndOfMibView => "endOfMibView",
        }
    }

    /// The JSON `value` (SCHEMA.md): numbers as JSON numbers (INTEGER beyond i64 as a decimal
    /// string), OCTET STRING as text or `{"hex": ..}`, Opaque as `{"hex": ..}`, addresses and
    /// OIDs as strings, the exceptions and NULL as `null`.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Integer(i) => integer_json(i),
            Value::OctetString(b) => octets_json(b),
            Value::Oid(s) => Json::String(s.clone()),
            Value::IpAddress(a) => Json::String(format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])),
            Value::Counter32(n) | Value::Gauge32(n) | Value::TimeTicks(n) => json!(n),
            Value::Counter64(n) => json!(n),
            Value::Opaque(b) => json!({ "hex": hex(b) }),
            Value::Null | Value::NoSuchObject | Value::NoSuchInstance | Value::EndOfMibView => {
                Json::Null
            }
        }
    }

    /// Canonical bytes of the value for a content key (the type name is hashed beside them).
    fn canonical(&self) -> Vec<u8> {
        match self {
            Value::Integer(i) => i.to_string().into_bytes(),
            Value::OctetString(b) | Value::Opaque(b) => b.clone(),
            Value::Oid(s) => s.as_bytes().to_vec(),
            Value::IpAddress(a) => a.to_vec(),
            Value::Counter32(n) | Value::Gauge32(n) | Value::TimeTicks(n) => {
                n.to_be_bytes().to_vec()
            }
            Value::Counter64(n) => n.to_be_bytes().to_vec(),
            Value::Null | Value::NoSuchObject | Value::NoSuchInstance | Value::EndOfMibView => {
                Vec::new()
            }
        }
    }
}

fn integer_json(i: &Integer) -> Json {
    match i64::try_from(i) {
        Ok(n) => json!(n),
        Err(_) => Json::String(i.to_string()),
    }
}

/// OCTET STRING rendering (SCHEMA.md): a JSON string when the bytes are valid UTF-8 without
/// control characters other than TAB, LF and CR; otherwise `{"hex": "..."}` (lowercase, no
/// separators). Binary values such as MAC addresses are thus never shown as mangled text.
pub(crate) fn octets_json(b: &[u8]) -> Json {
    match std::str::from_utf8(b) {
        Ok(s)
            if !s
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) =>
        {
            Json::String(s.to_owned())
        }
        _ => json!({ "hex": hex(b) }),
    }
}

pub(crate) use crate::hex;

impl VarBind {
    pub fn to_json(&self) -> Json {
        json!({ "oid": self.oid, "type": self.value.type_name(), "value": self.value.to_json() })
    }
}

/// Adds a varbind list to a key: its length, then per varbind the OID, the type name and the
/// canonical value, each length-prefixed by [`KeyBuilder::part`].
pub(crate) fn key_varbinds(key: &mut KeyBuilder, varbinds: &[VarBind]) {
    key.part(&(varbinds.len() as u64).to_le_bytes());
    for vb in varbinds {
        key.part(vb.oid.as_bytes())
            .part(vb.value.type_name().as_bytes())
            .part(&vb.value.canonical());
    }
}

/// JSON list of varbinds.
pub(crate) fn varbinds_json(varbinds: &[VarBind]) -> Json {
    Json::Array(varbinds.iter().map(VarBind::to_json).collect())
}

/// Converts v2 (v2c and v3) varbinds.
pub(crate) fn from_v2(list: &[v2::VarBind]) -> Vec<VarBind> {
    list.iter()
        .map(|vb| VarBind {
            oid: dotted(&vb.name),
            value: from_v2_value(&vb.value),
        })
        .collect()
}

fn from_v2_value(v: &v2::VarBindValue) -> Value {
    use rasn_smi::v2::{ApplicationSyntax as A, ObjectSyntax as O, SimpleSyntax as S};
    match v {
        v2::VarBindValue::Value(O::Simple(S::Integer(i))) => Value::Integer(i.clone()),
        v2::VarBindValue::Value(O::Simple(S::String(s))) => Value::OctetString(s.to_vec()),
        v2::VarBindValue::Value(O::Simple(S::ObjectId(o))) => Value::Oid(dotted(o)),
        v2::VarBindValue::Value(O::ApplicationWide(a)) => match a {
            A::Address(ip) => Value::IpAddress(ip_octets(ip)),
            A::Counter(c) => Value::Counter32(c.0),
            A::Ticks(t) => Value::TimeTicks(t.0),
            A::Arbitrary(o) => Value::Opaque(o.as_ref().to_vec()),
            A::BigCounter(c) => Value::Counter64(c.0),
            A::Unsigned(g) => Value::Gauge32(g.0),
        },
        v2::VarBindValue::Unspecified => Value::Null,
        v2::VarBindValue::NoSuchObject => Value::NoSuchObject,
        v2::VarBindValue::NoSuchInstance => Value::NoSuchInstance,
        v2::VarBindValue::EndOfMibView => Value::EndOfMibView,
    }
}

pub(crate) fn ip_octets(ip: &rasn_smi::v1::IpAddress) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&ip.0[..]);
    a
}

/// Converts v1 varbinds.
pub(crate) fn from_v1(list: &[v1::VarBind]) -> Vec<VarBind> {
    use rasn_smi::v1::{
        ApplicationSyntax as A, NetworkAddress, ObjectSyntax as O, SimpleSyntax as S,
    };
    list.iter()
        .map(|vb| VarBind {
            oid: dotted(&vb.name),
            value: match &vb.value {
                O::Simple(S::Number(i)) => Value::Integer(i.clone()),
                O::Simple(S::String(s)) => Value::OctetString(s.to_vec()),
                O::Simple(S::Object(o)) => Value::Oid(dotted(o)),
                O::Simple(S::Empty) => Value::Null,
                O::ApplicationWide(A::Address(NetworkAddress::Internet(ip))) => {
                    Value::IpAddress(ip_octets(ip))
                }
                O::ApplicationWide(A::Counter(c)) => Value::Counter32(c.0),
                O::ApplicationWide(A::Gauge(g)) => Value::Gauge32(g.0),
                O::ApplicationWide(A::Ticks(t)) => Value::TimeTicks(t.0),
                O::ApplicationWide(A::Arbitrary(o)) => Value::Opaque(o.as_ref().to_vec()),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octet_strings_are_text_only_when_clean_utf8() {
        assert_eq!(octets_json(b"link down\n"), json!("link down\n"));
        assert_eq!(octets_json("größe".as_bytes()), json!("größe"));
        assert_eq!(
            octets_json(&[0x00, 0x1b, 0x21, 0x3a, 0x4f, 0x5e]),
            json!({"hex": "001b213a4f5e"})
        );
        assert_eq!(octets_json(&[0xff, 0xfe]), json!({"hex": "fffe"}));
        assert_eq!(octets_json(b""), json!(""));
    }

    #[test]
    fn canonical_values_differ_by_type() {
        let vb = |value| VarBind {
            oid: "1.3.6.1".into(),
            value,
        };
        let k = |v: &[VarBind]| {
            let mut b = KeyBuilder::new("t");
            key_varbinds(&mut b, v);
            b.finish()
        };
        assert_ne!(k(&[vb(Value::Counter32(5))]), k(&[vb(Value::Gauge32(5))]));
        assert_ne!(k(&[vb(Value::Counter32(5))]), k(&[vb(Value::Counter32(6))]));
        assert_eq!(k(&[vb(Value::Counter32(5))]), k(&[vb(Value::Counter32(5))]));
    }
}
