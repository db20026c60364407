//! Encoders: the Response to a v2c inform, and the pure encoders `twinrx gen` uses to send
//! v2c traps and informs and to recognise the Responses it gets back.

use rasn::types::{Integer, ObjectIdentifier, OctetString};
use rasn_smi::v2::{ApplicationSyntax, Counter64, ObjectSyntax, SimpleSyntax};
use rasn_snmp::{v2, v2c};

/// A value `gen` can put in a varbind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GenValue {
    Integer(i64),
    OctetString(Vec<u8>),
    Oid(String),
    IpAddress([u8; 4]),
    Counter32(u32),
    Gauge32(u32),
    TimeTicks(u32),
    Counter64(u64),
}

/// An encoder input that cannot be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("{0:?} is not a dotted OID with at least two arcs, the first 0, 1 or 2")]
    Oid(String),
    #[error("BER encoding failed: {0}")]
    Ber(String),
}

fn oid(dotted: &str) -> Result<ObjectIdentifier, EncodeError> {
    let arcs: Result<Vec<u32>, _> = dotted.split('.').map(str::parse::<u32>).collect();
    arcs.ok()
        .and_then(ObjectIdentifier::new)
        .ok_or_else(|| EncodeError::Oid(dotted.to_owned()))
}

fn value(v: &GenValue) -> Result<v2::VarBindValue, EncodeError> {
    let syntax: ObjectSyntax = match v {
        GenValue::Integer(i) => SimpleSyntax::Integer(Integer::from(*i)).into(),
        GenValue::OctetString(b) => SimpleSyntax::String(OctetString::from(b.clone())).into(),
        GenValue::Oid(o) => SimpleSyntax::ObjectId(oid(o)?).into(),
        GenValue::IpAddress(a) => {
            ApplicationSyntax::Address(rasn_smi::v1::IpAddress((*a).into())).into()
        }
        GenValue::Counter32(n) => ApplicationSyntax::Counter(rasn_smi::v1::Counter(*n)).into(),
        GenValue::Gauge32(n) => ApplicationSyntax::Unsigned(rasn_smi::v1::Gauge(*n)).into(),
        GenValue::TimeTicks(n) => ApplicationSyntax::Ticks(rasn_smi::v1::TimeTicks(*n)).into(),
        GenValue::Counter64(n) => ApplicationSyntax::BigCounter(Counter64(*n)).into(),
    };
    Ok(v2::VarBindValue::Value(syntax))
}

/// The PDU of a notification: sysUpTime.0, snmpTrapOID.0, then `varbinds` (RFC 3416 §4.2.6).
fn notification_pdu(
    request_id: i32,
    uptime: u32,
    trap_oid: &str,
    varbinds: &[(String, GenValue)],
) -> Result<v2::Pdu, EncodeError> {
    let mut list = vec![
        v2::VarBind {
            name: oid(super::SYS_UPTIME_0)?,
            value: value(&GenValue::TimeTicks(uptime))?,
        },
        v2::VarBind {
            name: oid(super::SNMP_TRAP_OID_0)?,
            value: value(&GenValue::Oid(trap_oid.to_owned()))?,
        },
    ];
    for (name, v) in varbinds {
        list.push(v2::VarBind {
            name: oid(name)?,
            value: value(v)?,
        });
    }
    Ok(v2::Pdu {
        request_id,
        error_status: 0,
        error_index: 0,
        variable_bindings: list,
    })
}

fn encode_v2c(community: &[u8], data: v2::Pdus) -> Result<Vec<u8>, EncodeError> {
    let msg = v2c::Message {
        version: Integer::from(1),
        community: OctetString::from(community.to_vec()),
        data,
    };
    rasn::ber::encode(&msg).map_err(|e| EncodeError::Ber(e.to_string()))
}

/// An SNMPv2c Trap (`SNMPv2-Trap-PDU`) with sysUpTime.0 = `uptime`, snmpTrapOID.0 =
/// `trap_oid` and then `varbinds` (dotted OIDs).
pub fn encode_v2c_trap(
    community: &[u8],
    request_id: i32,
    uptime: u32,
    trap_oid: &str,
    varbinds: &[(String, GenValue)],
) -> Result<Vec<u8>, EncodeError> {
    let pdu = notification_pdu(request_id, uptime, trap_oid, varbinds)?;
    encode_v2c(community, v2::Pdus::Trap(v2::Trap(pdu)))
}

/// An SNMPv2c InformRequest; the receiver answers with a Response of the same request-id
/// (see [`parse_response`]).
pub fn encode_v2c_inform(
    community: &[u8],
    request_id: i32,
    uptime: u32,
    trap_oid: &str,
    varbinds: &[(String, GenValue)],
) -> Result<Vec<u8>, EncodeError> {
    let pdu = notification_pdu(request_id, uptime, trap_oid, varbinds)?;
    encode_v2c(community, v2::Pdus::InformRequest(v2::InformRequest(pdu)))
}

/// The request-id of a v2c Response with error-status 0 (an acknowledged inform), else `None`.
pub fn parse_response(bytes: &[u8]) -> Option<i32> {
    let msg: v2c::Message<v2::Pdus> = super::ber_decode(bytes).ok()?;
    match msg.data {
        v2::Pdus::Response(v2::Response(pdu)) if pdu.error_status == 0 => Some(pdu.request_id),
        _ => None,
    }
}

/// The Response to a v2c InformRequest (RFC 3416 §4.2.7: same request-id and varbinds,
/// error-status 0), with its request-id.
pub(crate) fn v2c_response(
    version: Integer,
    community: OctetString,
    pdu: v2::Pdu,
) -> (i32, Vec<u8>) {
    let request_id = pdu.request_id;
    let response = |variable_bindings| v2c::Message {
        version: version.clone(),
        community: community.clone(),
        data: v2::Pdus::Response(v2::Response(v2::Pdu {
            request_id,
            error_status: 0,
            error_index: 0,
            variable_bindings,
        })),
    };
    // A value that decoded re-encodes; should one not (an OID arc rasn refuses to encode), the
    // sender still gets its acknowledgement, without varbinds (it matches on the request-id).
    let bytes = rasn::ber::encode(&response(pdu.variable_bindings))
        .or_else(|_| rasn::ber::encode(&response(Vec::new())))
        .expect("a Response without varbinds always encodes");
    (request_id, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_inform_round_trips_through_parse_response() {
        let vbs = vec![(
            "1.3.6.1.4.1.99999.1".to_owned(),
            GenValue::OctetString(b"token-1".to_vec()),
        )];
        let inform =
            encode_v2c_inform(b"public", -5, 42, "1.3.6.1.4.1.99999.0.1", &vbs).expect("encodes");
        let msg: v2c::Message<v2::Pdus> = rasn::ber::decode(&inform).expect("decodes");
        let v2::Pdus::InformRequest(v2::InformRequest(pdu)) = msg.data else {
            panic!("not an inform: {:?}", msg.data);
        };
        assert_eq!(pdu.variable_bindings.len(), 3);
        let (id, response) = v2c_response(msg.version, msg.community, pdu);
        assert_eq!(id, -5);
        assert_eq!(parse_response(&response), Some(-5));
        assert_eq!(parse_response(&inform), None);
        assert_eq!(parse_response(b"\x30\x00"), None);
    }

    #[test]
    fn bad_oids_are_errors() {
        assert!(matches!(
            encode_v2c_trap(b"p", 1, 0, "1.3.x", &[]),
            Err(EncodeError::Oid(_))
        ));
        assert!(matches!(
            encode_v2c_trap(b"p", 1, 0, "7.3", &[]),
            Err(EncodeError::Oid(_))
        ));
    }
}
