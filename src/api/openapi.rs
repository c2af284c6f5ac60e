//! The OpenAPI 3 document of the HTTP/JSON API, served at `/openapi.json`.
//!
//! Generated, not written: paths from the route table (`rest::ROUTES`, the
//! same one the router is built from) and schemas from the compiled proto
//! descriptors, following the proto3 JSON mapping (lowerCamelCase names,
//! 64-bit integers as strings, bytes as base64 strings, enums by name, maps
//! as objects). A field added to the proto is in the document with the next
//! build; a route cannot be served without being documented.

use std::{collections::BTreeSet, sync::OnceLock};

use prost::Message as _;
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorSet,
    field_descriptor_proto::{Label, Type},
};
use serde_json::{Map, Value, json};

use super::{proto, rest};

const PACKAGE: &str = "lookbook.v1";

/// The document as JSON bytes, built once per process.
pub(crate) fn document() -> Result<&'static [u8], String> {
    static DOCUMENT: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let value = build()?;
            serde_json::to_vec_pretty(&value).map_err(|e| e.to_string())
        })
        .as_ref()
        .map(Vec::as_slice)
        .map_err(Clone::clone)
}

fn build() -> Result<Value, String> {
    let set = FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())?;
    let file = set
        .file
        .iter()
        .find(|f| f.package() == PACKAGE)
        .ok_or("no lookbook.v1 file in the descriptor set")?;
    let mut schemas = Map::new();
    for message in &file.message_type {
        schemas.insert(message.name().to_owned(), message_schema(message)?);
    }
    for enumeration in &file.enum_type {
        let values: Vec<Value> = enumeration
            .value
            .iter()
            .map(|v| Value::from(v.name()))
            .collect();
        schemas.insert(
            enumeration.name().to_owned(),
            json!({"type": "string", "enum": values}),
        );
    }
    schemas.insert(
        "Error".to_owned(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "status", "message"],
                "properties": {
                    "code": {"type": "integer", "description": "The HTTP status"},
                    "status": {"type": "string", "description": "The gRPC status name (google.rpc.Code), e.g. INVALID_ARGUMENT"},
                    "message": {"type": "string"}
                }
            }}
        }),
    );
    let mut paths = Map::new();
    for (path, routes) in rest::routes_by_path() {
        let mut item = Map::new();
        for route in routes {
            item.insert(route.method.to_owned(), operation(route, &schemas)?);
        }
        paths.insert(path.to_owned(), Value::Object(item));
    }
    Ok(json!({
        "openapi": "3.0.3",
        "info": {
            "title": "lookbook",
            "version": "v1",
            "description": "Visual and personalized product recommendations. The same API as the gRPC service lookbook.v1.RecommenderService, in the proto3 JSON mapping. Errors carry the gRPC status name; see the README for the status mapping."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}]
    }))
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// `.lookbook.v1.Foo` -> `Foo`; nested (map entry) types keep their
/// parent: `.lookbook.v1.Product.AttributesEntry` -> `Product.AttributesEntry`.
fn local_name(type_name: &str) -> &str {
    type_name
        .strip_prefix('.')
        .and_then(|n| n.strip_prefix(PACKAGE))
        .and_then(|n| n.strip_prefix('.'))
        .unwrap_or(type_name)
}

fn scalar_schema(field: &FieldDescriptorProto) -> Result<Value, String> {
    Ok(match field.r#type() {
        Type::Double | Type::Float => json!({"type": "number"}),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Type::Uint32 | Type::Fixed32 => json!({"type": "integer", "format": "int64", "minimum": 0}),
        // proto3 JSON: 64-bit integers are strings (JavaScript numbers
        // lose precision past 2^53).
        Type::Int64 | Type::Sint64 | Type::Sfixed64 => json!({"type": "string", "format": "int64"}),
        Type::Uint64 | Type::Fixed64 => json!({"type": "string", "format": "uint64"}),
        Type::Bool => json!({"type": "boolean"}),
        Type::String => json!({"type": "string"}),
        Type::Bytes => json!({"type": "string", "format": "byte"}),
        Type::Enum | Type::Message => reference(local_name(field.type_name())),
        Type::Group => return Err(format!("field {} is a group", field.name())),
    })
}

fn message_schema(message: &DescriptorProto) -> Result<Value, String> {
    let mut properties = Map::new();
    for field in &message.field {
        let schema = match map_entry(message, field) {
            Some(entry) => {
                let value = entry
                    .field
                    .iter()
                    .find(|f| f.name() == "value")
                    .ok_or("map entry without a value field")?;
                json!({"type": "object", "additionalProperties": scalar_schema(value)?})
            }
            None if field.label() == Label::Repeated => {
                json!({"type": "array", "items": scalar_schema(field)?})
            }
            None => scalar_schema(field)?,
        };
        properties.insert(field.json_name().to_owned(), schema);
    }
    let mut schema = json!({"type": "object", "properties": properties});
    let oneofs: BTreeSet<String> = message
        .oneof_decl
        .iter()
        .enumerate()
        .map(|(i, decl)| {
            let members: Vec<&str> = message
                .field
                .iter()
                .filter(|f| f.oneof_index == i32::try_from(i).ok())
                .map(FieldDescriptorProto::json_name)
                .collect();
            format!("`{}`: at most one of {}", decl.name(), members.join(", "))
        })
        .collect();
    if !oneofs.is_empty() {
        schema["description"] = Value::from(oneofs.into_iter().collect::<Vec<_>>().join("; "));
    }
    Ok(schema)
}

/// The map entry type of `field`, if it is a map.
fn map_entry<'a>(
    message: &'a DescriptorProto,
    field: &FieldDescriptorProto,
) -> Option<&'a DescriptorProto> {
    if field.r#type() != Type::Message || field.label() != Label::Repeated {
        return None;
    }
    let name = local_name(field.type_name()).rsplit('.').next()?;
    message
        .nested_type
        .iter()
        .find(|n| n.name() == name && n.options.as_ref().is_some_and(|o| o.map_entry()))
}

fn parameter(name: &str, location: &str, schema: Value, description: &str) -> Value {
    json!({
        "name": name,
        "in": location,
        "required": location == "path",
        "schema": schema,
        "description": description
    })
}

fn operation(route: &rest::Route, schemas: &Map<String, Value>) -> Result<Value, String> {
    let mut op = Map::new();
    op.insert("operationId".into(), Value::from(format!("{:?}", route.op)));
    op.insert("summary".into(), Value::from(route.summary));
    op.insert(
        "description".into(),
        Value::from(format!(
            "gRPC: lookbook.v1.RecommenderService/{}",
            route.rpc
        )),
    );
    let mut parameters = Vec::new();
    for segment in route.path.split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            parameters.push(parameter(name, "path", json!({"type": "string"}), ""));
        }
    }
    let view = json!({"type": "string", "enum": ["PRODUCT_VIEW_UNSPECIFIED", "PRODUCT_VIEW_BASIC", "PRODUCT_VIEW_FULL"]});
    match route.op {
        rest::Op::ListProducts => {
            parameters.push(parameter(
                "pageSize",
                "query",
                json!({"type": "integer"}),
                "0: 100; at most 1000",
            ));
            parameters.push(parameter(
                "pageToken",
                "query",
                json!({"type": "string"}),
                "nextPageToken of the previous page",
            ));
            parameters.push(parameter("view", "query", view, ""));
            for name in ["must", "mustNot"] {
                parameters.push(json!({
                    "name": name, "in": "query", "required": false,
                    "style": "form", "explode": true,
                    "schema": {"type": "array", "items": {"type": "string"}},
                    "description": "key:value; repeat the parameter for more values (of one key: any of them) or keys (all of them)"
                }));
            }
        }
        rest::Op::GetProduct => parameters.push(parameter("view", "query", view, "")),
        rest::Op::ListAttributes => parameters.push(parameter(
            "maxValues",
            "query",
            json!({"type": "integer"}),
            "values per key, most common first; 0: 100; at most 1000",
        )),
        rest::Op::Embed
        | rest::Op::AddProduct
        | rest::Op::UpdateProduct
        | rest::Op::DeleteProduct
        | rest::Op::GetProducts
        | rest::Op::Thumbnail
        | rest::Op::RecommendSimilar
        | rest::Op::RecordInteraction
        | rest::Op::RecommendForUser
        | rest::Op::ForgetUser
        | rest::Op::GetStats => {}
    }
    if !parameters.is_empty() {
        op.insert("parameters".into(), Value::Array(parameters));
    }
    if let Some(request) = route.request {
        if !schemas.contains_key(request) {
            return Err(format!("{request} is not a message of {PACKAGE}"));
        }
        let mut content = json!({"application/json": {"schema": reference(request)}});
        if route.op == rest::Op::RecommendSimilar {
            content["multipart/form-data"] = json!({"schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary", "description": "the photo (JPEG, PNG or WebP)"},
                    "request": {"type": "string", "description": "JSON of the other RecommendSimilarRequest fields (k, filter, diversity, ...)"}
                }
            }});
        }
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": content}),
        );
    }
    let ok = match route.response {
        Some(response) => {
            if !schemas.contains_key(response) {
                return Err(format!("{response} is not a message of {PACKAGE}"));
            }
            json!({"description": "OK", "content": {"application/json": {"schema": reference(response)}}})
        }
        None => json!({
            "description": "The JPEG, with ETag and Cache-Control",
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}
        }),
    };
    let mut responses = json!({
        "200": ok,
        "default": {"description": "An error", "content": {"application/json": {"schema": reference("Error")}}}
    });
    if route.op == rest::Op::Thumbnail {
        responses["304"] = json!({"description": "Not modified (If-None-Match)"});
    }
    op.insert("responses".into(), responses);
    Ok(Value::Object(op))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_covers_every_route_and_its_references_resolve() {
        let doc: Value = serde_json::from_slice(document().unwrap()).unwrap();
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().unwrap();
        for route in rest::ROUTES {
            assert!(
                paths[route.path].get(route.method).is_some(),
                "{} {} missing",
                route.method,
                route.path
            );
        }
        let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(operations, rest::ROUTES.len());
        // Every $ref points at a schema that exists.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let text = serde_json::to_string(&doc).unwrap();
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
        // The proto3 JSON mapping: camelCase names, 64-bit integers as strings.
        let stats = &schemas["GetStatsResponse"]["properties"];
        assert_eq!(stats["catalogSize"]["type"], "string");
        assert_eq!(stats["dim"]["type"], "integer");
        assert_eq!(stats["metric"]["$ref"], "#/components/schemas/Metric");
        let product = &schemas["Product"]["properties"];
        assert_eq!(
            product["attributes"]["additionalProperties"]["type"],
            "string"
        );
        assert_eq!(product["hasThumbnail"]["type"], "boolean");
        let similar = &schemas["RecommendSimilarRequest"];
        assert!(
            similar["description"]
                .as_str()
                .unwrap()
                .contains("productId")
        );
        assert_eq!(similar["properties"]["image"]["format"], "byte");
    }
}
