//! Protobuf messages as JSON (the proto3 JSON mapping, through the descriptor
//! set the services publish for reflection): what `--output json` prints and
//! what `rules publish` reads.

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

fn descriptor(full_name: &str) -> anyhow::Result<MessageDescriptor> {
    let pool = DescriptorPool::decode(gridwork_proto::FILE_DESCRIPTOR_SET)?;
    pool.get_message_by_name(full_name).ok_or_else(|| anyhow::anyhow!("{full_name} is not a Gridwork message"))
}

/// `message` (of type `full_name`, e.g. `gridwork.dispatch.v1.Rulebook`) as
/// pretty JSON.
pub fn to_json(message: &impl prost::Message, full_name: &str) -> anyhow::Result<String> {
    let dynamic = DynamicMessage::decode(descriptor(full_name)?, message.encode_to_vec().as_slice())?;
    Ok(serde_json::to_string_pretty(&dynamic)?)
}

/// `message` as one line of JSON (JSON Lines).
pub fn to_json_line(message: &impl prost::Message, full_name: &str) -> anyhow::Result<String> {
    let dynamic = DynamicMessage::decode(descriptor(full_name)?, message.encode_to_vec().as_slice())?;
    Ok(serde_json::to_string(&dynamic)?)
}

/// A message of type `full_name` from JSON; an unknown field or a wrong type
/// is an error naming it.
pub fn from_json<M: prost::Message + Default>(text: &str, full_name: &str) -> anyhow::Result<M> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(descriptor(full_name)?, &mut deserializer)?;
    deserializer.end()?;
    Ok(dynamic.transcode_to::<M>()?)
}

#[cfg(test)]
mod tests {
    use gridwork_proto::gridwork::dispatch::v1 as pb;

    use super::*;

    /// Every message name gridctl prints under `--output json` is one the
    /// services publish: a misspelt name would end a command that succeeded
    /// with an error.
    #[test]
    fn every_emitted_message_name_is_known() {
        let sources = [
            include_str!("cases.rs"),
            include_str!("incidents.rs"),
            include_str!("units.rs"),
            include_str!("rules.rs"),
        ];
        let mut names = Vec::new();
        for source in sources {
            for (i, _) in source.match_indices("\"gridwork.") {
                let rest = &source[i + 1..];
                names.push(rest[..rest.find('"').expect("closing quote")].to_string());
            }
        }
        assert!(names.len() > 30, "found only {names:?}");
        for name in names {
            descriptor(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn a_rulebook_round_trips_through_json_and_a_misspelt_field_is_named() {
        let book = pb::Rulebook {
            version: 3,
            departments: vec![pb::Department { code: "police".into(), name: "公安 Police".into() }],
            sla: Some(pb::SlaPolicy {
                emergency: Some(pb::ClockPlan {
                    acknowledge: Some(pb::Span { length: Some(pb::span::Length::WallMinutes(5)) }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = to_json(&book, "gridwork.dispatch.v1.Rulebook").expect("json");
        assert!(text.contains("\"wallMinutes\": 5"), "{text}");
        let back: pb::Rulebook = from_json(&text, "gridwork.dispatch.v1.Rulebook").expect("parses");
        assert_eq!(back, book);
        let e =
            from_json::<pb::Rulebook>(r#"{"departmnts": []}"#, "gridwork.dispatch.v1.Rulebook").expect_err("misspelt");
        assert!(e.to_string().contains("departmnts"), "{e}");
    }
}
