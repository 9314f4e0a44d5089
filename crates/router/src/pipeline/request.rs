//! A `CompleteRequest` checked at the boundary: every rule that can refuse a request runs here,
//! before anything is reserved, called or recorded, and each error names the field.
//!
//! The proto messages themselves are kept (they are forwarded to the provider-adapter as they
//! are); what is derived from them (hints, the text to classify, the body's hash) sits beside.

use sha2::{Digest, Sha256};
use tollgate_kit::error::invalid_argument;
use tollgate_kit::money::Usd;
use tollgate_proto::v1 as pb;
use tonic::Status;

use crate::pipeline::case_memory::CaseMemoryMode;
use crate::policy::Hints;
use crate::tier::Tier;

/// Explicit limits (DESIGN: limits are explicit and enforced).
pub const MAX_MESSAGES: usize = 512;
pub const MAX_DOCUMENTS: usize = 256;
pub const MAX_TAGS: usize = 32;
pub const MAX_ID_CHARS: usize = 128;
const IMAGE_MIME_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/webp", "image/gif"];

#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub request_id: String,
    pub agent: String,
    pub user: String,
    pub messages: Vec<pb::Message>,
    pub context: Option<pb::ContextSpec>,
    pub hints: Hints,
    pub max_cost: Option<Usd>,
    pub max_tokens: i64,
    pub temperature: Option<f32>,
    pub json_mode: bool,
    pub store_case: Option<bool>,
    pub tags: Vec<String>,
    /// `None`: the agent's configured default.
    pub case_memory: Option<CaseMemoryMode>,
    pub include_negative_examples: bool,
    pub has_images: bool,
    /// The last user message's text: what is classified, embedded and stored as the case task.
    pub task: String,
    /// Messages before the last user message.
    pub conversation_depth: usize,
    /// SHA-256 of the request without its id: a reused id with another body is refused.
    pub body_sha256: [u8; 32],
}

impl CompletionRequest {
    /// Checks `request` (whose `tenant` the caller has already checked against the key).
    pub fn from_proto(mut request: pb::CompleteRequest) -> Result<Self, Status> {
        let request_id = std::mem::take(&mut request.request_id);
        let request_id = if request_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            check_id("request_id", &request_id)?;
            request_id
        };
        let body_sha256 = {
            use prost::Message as _;
            let mut hasher = Sha256::new();
            hasher.update(request.encode_to_vec());
            hasher.finalize().into()
        };
        if request.messages.is_empty() {
            return Err(invalid_argument(
                "messages",
                "at least one message is required",
            ));
        }
        if request.messages.len() > MAX_MESSAGES {
            return Err(invalid_argument(
                "messages",
                format!(
                    "at most {MAX_MESSAGES} messages, got {}",
                    request.messages.len()
                ),
            ));
        }
        let mut has_images = false;
        for (index, message) in request.messages.iter().enumerate() {
            has_images |= check_message(index, message)?;
        }
        let last_user = request
            .messages
            .iter()
            .rposition(|m| {
                m.role == pb::Role::User as i32 || m.role == pb::Role::Unspecified as i32
            })
            .ok_or_else(|| invalid_argument("messages", "needs at least one user message"))?;
        let task = message_text(&request.messages[last_user]);
        if request.max_tokens < 0 {
            return Err(invalid_argument(
                "max_tokens",
                format!("must not be negative, got {}", request.max_tokens),
            ));
        }
        if let Some(temperature) = request.temperature
            && !(0.0..=2.0).contains(&temperature)
        {
            return Err(invalid_argument(
                "temperature",
                format!("must be in [0, 2], got {temperature}"),
            ));
        }
        let (hints, max_cost) = check_hints(request.hints.take())?;
        if let Some(context) = &request.context {
            check_context(context)?;
        }
        if request.tags.len() > MAX_TAGS {
            return Err(invalid_argument(
                "tags",
                format!("at most {MAX_TAGS} tags, got {}", request.tags.len()),
            ));
        }
        if !request.agent.is_empty() {
            check_id("agent", &request.agent)?;
        }
        let case_memory = match pb::CaseMemory::try_from(request.case_memory) {
            Ok(pb::CaseMemory::Unspecified) => None,
            Ok(pb::CaseMemory::Off) => Some(CaseMemoryMode::Off),
            Ok(pb::CaseMemory::Examples) => Some(CaseMemoryMode::Examples),
            Err(_) => {
                return Err(invalid_argument(
                    "case_memory",
                    format!("unknown value {}", request.case_memory),
                ));
            }
        };
        Ok(Self {
            request_id,
            agent: request.agent,
            user: request.user,
            conversation_depth: last_user,
            messages: request.messages,
            context: request.context.filter(|c| !c.documents.is_empty()),
            hints,
            max_cost,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            json_mode: request.json_mode,
            store_case: request.store_case,
            tags: request.tags,
            case_memory,
            include_negative_examples: request.include_negative_examples,
            has_images,
            task,
            body_sha256,
        })
    }

    /// Hex SHA-256 of the task text, for the ledger (which never stores prompt text).
    pub fn query_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.task.as_bytes()))
    }
}

fn check_id(field: &str, value: &str) -> Result<(), Status> {
    if value.chars().count() > MAX_ID_CHARS {
        return Err(invalid_argument(
            field,
            format!("at most {MAX_ID_CHARS} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid_argument(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Returns whether the message has an image.
fn check_message(index: usize, message: &pb::Message) -> Result<bool, Status> {
    if pb::Role::try_from(message.role).is_err() {
        return Err(invalid_argument(
            &format!("messages[{index}].role"),
            format!("unknown role {}", message.role),
        ));
    }
    if message.text.is_empty() && message.parts.is_empty() {
        return Err(invalid_argument(
            &format!("messages[{index}]"),
            "needs text or parts",
        ));
    }
    let mut has_image = false;
    for (part_index, part) in message.parts.iter().enumerate() {
        let field = format!("messages[{index}].parts[{part_index}]");
        match &part.part {
            Some(pb::content_part::Part::Text(_)) => {}
            Some(pb::content_part::Part::Image(image)) => {
                check_image(&format!("{field}.image"), image)?;
                has_image = true;
            }
            None => return Err(invalid_argument(&field, "is empty (set text or image)")),
        }
    }
    Ok(has_image)
}

fn check_image(field: &str, image: &pb::Image) -> Result<(), Status> {
    match &image.source {
        Some(pb::image::Source::Data(data)) => {
            if !IMAGE_MIME_TYPES.contains(&image.mime_type.as_str()) {
                return Err(invalid_argument(
                    &format!("{field}.mime_type"),
                    format!(
                        "must be one of {}, got {:?}",
                        IMAGE_MIME_TYPES.join(", "),
                        image.mime_type
                    ),
                ));
            }
            if !magic_matches(&image.mime_type, data) {
                return Err(invalid_argument(
                    &format!("{field}.data"),
                    format!("is not a valid {} image", image.mime_type),
                ));
            }
            Ok(())
        }
        Some(pb::image::Source::Url(url)) => {
            if url.starts_with("https://")
                || url.starts_with("http://")
                || url.starts_with("data:image/")
            {
                Ok(())
            } else {
                Err(invalid_argument(
                    &format!("{field}.url"),
                    "must be an http(s) or data:image/ URL",
                ))
            }
        }
        None => Err(invalid_argument(field, "needs data or url")),
    }
}

/// The file signature of each accepted image type: a malformed image is refused here instead of
/// costing an upstream call that fails.
fn magic_matches(mime_type: &str, data: &[u8]) -> bool {
    match mime_type {
        "image/png" => data.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => data.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/gif" => data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a"),
        "image/webp" => data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP",
        _ => false,
    }
}

fn check_hints(hints: Option<pb::RoutingHints>) -> Result<(Hints, Option<Usd>), Status> {
    let Some(hints) = hints else {
        return Ok((Hints::default(), None));
    };
    let tier = |field: &str, value: i32| -> Result<Option<Tier>, Status> {
        if value == 0 {
            return Ok(None);
        }
        Tier::from_proto(value)
            .map(Some)
            .ok_or_else(|| invalid_argument(field, format!("unknown tier {value}")))
    };
    let max_cost = if hints.max_cost_usd.is_empty() {
        None
    } else {
        Some(
            Usd::parse_non_negative("hints.max_cost_usd", &hints.max_cost_usd)
                .map_err(|e| invalid_argument("hints.max_cost_usd", e))?,
        )
    };
    Ok((
        Hints {
            force_tier: tier("hints.force_tier", hints.force_tier)?,
            min_tier: tier("hints.min_tier", hints.min_tier)?,
            force_model: Some(hints.force_model).filter(|m| !m.is_empty()),
            allow_escalation: hints.allow_escalation,
        },
        max_cost,
    ))
}

fn check_context(context: &pb::ContextSpec) -> Result<(), Status> {
    if context.documents.len() > MAX_DOCUMENTS {
        return Err(invalid_argument(
            "context.documents",
            format!(
                "at most {MAX_DOCUMENTS} documents, got {}",
                context.documents.len()
            ),
        ));
    }
    if context.max_tokens < 0 {
        return Err(invalid_argument(
            "context.max_tokens",
            format!("must not be negative, got {}", context.max_tokens),
        ));
    }
    for (index, document) in context.documents.iter().enumerate() {
        if document.id.is_empty() {
            return Err(invalid_argument(
                &format!("context.documents[{index}].id"),
                "is required",
            ));
        }
        if document.text.is_none() && context.collection.is_empty() {
            return Err(invalid_argument(
                "context.collection",
                format!("is required for documents by reference (documents[{index}] has no text)"),
            ));
        }
    }
    Ok(())
}

/// The text of a message: `text`, then its text parts, joined by newlines.
pub fn message_text(message: &pb::Message) -> String {
    let mut text = message.text.clone();
    for part in &message.parts {
        if let Some(pb::content_part::Part::Text(part_text)) = &part.part {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(part_text);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> pb::Message {
        pb::Message {
            role: pb::Role::User as i32,
            text: text.into(),
            ..Default::default()
        }
    }

    fn request(messages: Vec<pb::Message>) -> pb::CompleteRequest {
        pb::CompleteRequest {
            messages,
            ..Default::default()
        }
    }

    fn error_of(request: pb::CompleteRequest) -> String {
        match CompletionRequest::from_proto(request) {
            Ok(_) => String::new(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                status.message().to_owned()
            }
        }
    }

    #[test]
    fn a_valid_request_gets_an_id_a_task_and_a_body_hash() {
        let checked = match CompletionRequest::from_proto(request(vec![
            pb::Message {
                role: pb::Role::System as i32,
                text: "be brief".into(),
                ..Default::default()
            },
            user("hello"),
        ])) {
            Ok(checked) => checked,
            Err(status) => panic!("{status}"),
        };
        assert!(!checked.request_id.is_empty());
        assert_eq!(checked.task, "hello");
        assert_eq!(checked.conversation_depth, 1);
        assert!(!checked.has_images);
    }

    #[test]
    fn the_body_hash_ignores_the_id_and_sees_every_other_field() {
        let hash = |id: &str, text: &str| {
            let mut r = request(vec![user(text)]);
            r.request_id = id.into();
            CompletionRequest::from_proto(r).map(|c| c.body_sha256).ok()
        };
        assert_eq!(hash("a", "x"), hash("b", "x"));
        assert_ne!(hash("a", "x"), hash("a", "y"));
    }

    #[test]
    fn bad_input_names_the_field() {
        assert!(error_of(request(vec![])).contains("messages"));
        let mut negative = request(vec![user("x")]);
        negative.max_tokens = -1;
        assert!(error_of(negative).contains("max_tokens"));
        let mut hot = request(vec![user("x")]);
        hot.temperature = Some(3.0);
        assert!(error_of(hot).contains("temperature"));
        let mut cost = request(vec![user("x")]);
        cost.hints = Some(pb::RoutingHints {
            max_cost_usd: "1e3".into(),
            ..Default::default()
        });
        assert!(error_of(cost).contains("hints.max_cost_usd"));
        let mut tier = request(vec![user("x")]);
        tier.hints = Some(pb::RoutingHints {
            min_tier: 42,
            ..Default::default()
        });
        assert!(error_of(tier).contains("hints.min_tier"));
        let mut reference = request(vec![user("x")]);
        reference.context = Some(pb::ContextSpec {
            documents: vec![pb::Document {
                id: "d1".into(),
                text: None,
            }],
            ..Default::default()
        });
        assert!(error_of(reference).contains("context.collection"));
    }

    #[test]
    fn a_malformed_image_is_refused_naming_the_part() {
        let image = |mime: &str, data: &[u8]| pb::Message {
            role: pb::Role::User as i32,
            text: "what is this".into(),
            parts: vec![pb::ContentPart {
                part: Some(pb::content_part::Part::Image(pb::Image {
                    source: Some(pb::image::Source::Data(data.to_vec())),
                    mime_type: mime.into(),
                })),
            }],
            ..Default::default()
        };
        let error = error_of(request(vec![image("image/png", b"not a png")]));
        assert!(error.contains("messages[0].parts[0].image.data"), "{error}");
        let error = error_of(request(vec![image("image/bmp", b"BM")]));
        assert!(error.contains("mime_type"), "{error}");
        let ok = CompletionRequest::from_proto(request(vec![image(
            "image/png",
            b"\x89PNG\r\n\x1a\n0000",
        )]));
        assert!(ok.is_ok_and(|r| r.has_images));
    }
}
