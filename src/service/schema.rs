//! The JSON Schemas of an endpoint's request and response, in the endpoint
//! metadata `$SRV.INFO` shows.

use std::collections::HashMap;

use schemars::JsonSchema;

use crate::Event;

/// Metadata key of the request's CloudEvents type.
pub const REQUEST_TYPE: &str = "request_type";
/// Metadata key of the response's CloudEvents type.
pub const RESPONSE_TYPE: &str = "response_type";
/// Metadata key of the request data's JSON Schema (a JSON text).
pub const REQUEST_SCHEMA: &str = "request_schema";
/// Metadata key of the response data's JSON Schema (a JSON text).
pub const RESPONSE_SCHEMA: &str = "response_schema";

/// The metadata of the endpoint taking `Req` and answering `Resp`.
pub(crate) fn endpoint_metadata<Req, Resp>() -> HashMap<String, String>
where
    Req: Event + JsonSchema,
    Resp: Event + JsonSchema,
{
    HashMap::from([
        (REQUEST_TYPE.to_owned(), Req::TYPE.to_owned()),
        (RESPONSE_TYPE.to_owned(), Resp::TYPE.to_owned()),
        (REQUEST_SCHEMA.to_owned(), schema_text::<Req>()),
        (RESPONSE_SCHEMA.to_owned(), schema_text::<Resp>()),
    ])
}

fn schema_text<T: JsonSchema>() -> String {
    // A schema is a JSON value: serializing it cannot fail.
    serde_json::to_string(&schemars::schema_for!(T)).unwrap_or_default()
}
