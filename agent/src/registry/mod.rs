//! The configuration registry (seed 004, nodewatcher's `node.config` registration point):
//! typed configuration items, layered defaults and rules, with the origin of every value.
//!
//! - Items are serde structs implementing [`Item`] and registered under an id such as
//!   `parker.node` or `dataplane.nat`, single or multiple (a list). Their [`Field`] schema is
//!   what validation checks, with messages that name item, field and origin.
//! - The `[registry]` section of exitd.toml ([`RegistryConfig`]) holds the layers
//!   `global` → `projects.<p>` → `node_types.<t>` → `nodes.<key>` / `gateways.<name>` and the
//!   `[[registry.rules]]` ([`config`] documents the syntax).
//! - [`eval`] resolves one subject (a Parker node or an exit gateway): layered defaults, then
//!   rules with nodewatcher's edge-triggered semantics, then validation.
//!
//! Registration: each module exposes `fn register(reg: &mut Registry)` and
//! [`standard`] is the composition root that calls them. A link-time collection (`inventory`,
//! `linkme`) would drop that list, but an explicit builder keeps registration visible,
//! ordered and testable: a test can build a registry with just the items it exercises, and
//! nothing in the core knows any item.

pub mod cli;
pub mod config;
pub mod eval;
pub mod gateway_items;

pub use config::RegistryConfig;
pub use eval::{Origin, Resolution, Resolver, SubjectState};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::collections::BTreeMap;

/// What a configuration is resolved for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SubjectKind {
    /// A Parker node, named by its WireGuard public key.
    Node,
    /// An exit node's gateway, named in `[registry.gateways]`.
    Gateway,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Node => "node",
            SubjectKind::Gateway => "gateway",
        }
    }
}

/// The JSON type a field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Integer,
    Float,
    Bool,
    String,
    StringList,
}

impl FieldType {
    fn name(self) -> &'static str {
        match self {
            FieldType::Integer => "an integer",
            FieldType::Float => "a number",
            FieldType::Bool => "a boolean",
            FieldType::String => "a string",
            FieldType::StringList => "a list of strings",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match self {
            FieldType::Integer => value.is_i64() || value.is_u64(),
            FieldType::Float => value.is_number(),
            FieldType::Bool => value.is_boolean(),
            FieldType::String => value.is_string(),
            FieldType::StringList => value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string)),
        }
    }
}

/// One field of an item's schema.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub ty: FieldType,
    /// Inclusive bounds for numbers.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Allowed values of a string field; empty: any.
    pub one_of: &'static [&'static str],
    pub doc: &'static str,
}

impl Field {
    pub const fn new(name: &'static str, ty: FieldType, doc: &'static str) -> Field {
        Field {
            name,
            ty,
            min: None,
            max: None,
            one_of: &[],
            doc,
        }
    }

    pub const fn range(mut self, min: f64, max: f64) -> Field {
        self.min = Some(min);
        self.max = Some(max);
        self
    }

    pub const fn one_of(mut self, values: &'static [&'static str]) -> Field {
        self.one_of = values;
        self
    }

    /// Checks one value; the message says what is wrong (the caller names item and field).
    pub fn check(&self, value: &Value) -> Result<(), String> {
        if !self.ty.accepts(value) {
            return Err(format!("{value} is not {}", self.ty.name()));
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = self.min.filter(|m| n < *m) {
                return Err(format!("{value} is below the minimum {min}"));
            }
            if let Some(max) = self.max.filter(|m| n > *m) {
                return Err(format!("{value} is above the maximum {max}"));
            }
        }
        if let (Some(s), false) = (value.as_str(), self.one_of.is_empty())
            && !self.one_of.contains(&s)
        {
            return Err(format!("{value} is not one of {:?}", self.one_of));
        }
        Ok(())
    }
}

/// A typed configuration item. `fields()` must list every serialized field of the struct
/// (a unit test per item checks it against `Default`).
pub trait Item: Serialize + DeserializeOwned + Default + 'static {
    const ID: &'static str;
    /// A list of entries instead of one value.
    const MULTIPLE: bool;
    const KINDS: &'static [SubjectKind];
    fn fields() -> &'static [Field];
    /// Checks across fields, after the field checks passed.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// An item as the registry stores it (type-erased).
#[derive(Clone)]
pub struct ItemDef {
    pub id: &'static str,
    pub multiple: bool,
    pub kinds: &'static [SubjectKind],
    pub fields: &'static [Field],
    default: fn() -> serde_json::Map<String, Value>,
    typed_check: fn(&Value) -> Result<(), String>,
}

impl ItemDef {
    pub fn of<T: Item>() -> ItemDef {
        ItemDef {
            id: T::ID,
            multiple: T::MULTIPLE,
            kinds: T::KINDS,
            fields: T::fields(),
            default: default_map::<T>,
            typed_check: typed_check::<T>,
        }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The field values of `T::default()`.
    pub fn default_fields(&self) -> serde_json::Map<String, Value> {
        (self.default)()
    }

    /// Deserializes one entry into the struct and runs its cross-field check.
    pub fn check_typed(&self, entry: &Value) -> Result<(), String> {
        (self.typed_check)(entry)
    }
}

fn default_map<T: Item>() -> serde_json::Map<String, Value> {
    match serde_json::to_value(T::default()) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

fn typed_check<T: Item>(entry: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(entry.clone()).map_err(|e| e.to_string())?;
    typed.check()
}

/// The registration point: every known item by id.
#[derive(Clone, Default)]
pub struct Registry {
    items: BTreeMap<&'static str, ItemDef>,
}

impl Registry {
    pub fn new() -> Registry {
        let mut registry = Registry::default();
        registry.register::<General>();
        registry
    }

    /// Registers `T`; a second registration of the same id is a programming error that
    /// keeps the first (and is logged).
    pub fn register<T: Item>(&mut self) {
        if self.items.contains_key(T::ID) {
            tracing::error!(id = T::ID, "configuration item registered twice");
            return;
        }
        self.items.insert(T::ID, ItemDef::of::<T>());
    }

    pub fn item(&self, id: &str) -> Option<&ItemDef> {
        self.items.get(id)
    }

    /// Items that apply to `kind`, in id order.
    pub fn items_for(&self, kind: SubjectKind) -> impl Iterator<Item = &ItemDef> {
        self.items.values().filter(move |d| d.kinds.contains(&kind))
    }

    pub fn ids(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.items.keys().copied()
    }
}

/// exitd's registry: every module's items.
pub fn standard() -> Registry {
    let mut registry = Registry::new();
    crate::parker::items::register(&mut registry);
    gateway_items::register(&mut registry);
    registry
}

/// `general`: what a subject is. Its `project` and `node_type` choose the default layers;
/// rules read the rest (nodewatcher's `core.general`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    pub project: String,
    pub node_type: String,
    /// Concentrator tunnels the node's hardware runs at once (nodewatcher's
    /// `supported_radios`).
    pub tunnels: u32,
    pub tags: Vec<String>,
}

impl Default for General {
    fn default() -> Self {
        General {
            project: String::new(),
            node_type: String::new(),
            tunnels: 1,
            tags: Vec::new(),
        }
    }
}

impl Item for General {
    const ID: &'static str = "general";
    const MULTIPLE: bool = false;
    const KINDS: &'static [SubjectKind] = &[SubjectKind::Node, SubjectKind::Gateway];
    fn fields() -> &'static [Field] {
        const FIELDS: &[Field] = &[
            Field::new(
                "project",
                FieldType::String,
                "project (PoP group) layer to use",
            ),
            Field::new("node_type", FieldType::String, "hardware / node type layer"),
            Field::new(
                "tunnels",
                FieldType::Integer,
                "concentrator tunnels the hardware runs",
            )
            .range(0.0, 16.0),
            Field::new("tags", FieldType::StringList, "free-form labels for rules"),
        ];
        FIELDS
    }
}

#[cfg(test)]
pub(crate) fn assert_schema_matches<T: Item>() {
    let def = ItemDef::of::<T>();
    let mut serialized: Vec<&str> = Vec::new();
    let defaults = def.default_fields();
    serialized.extend(defaults.keys().map(String::as_str));
    let mut listed: Vec<&str> = def.fields.iter().map(|f| f.name).collect();
    serialized.sort_unstable();
    listed.sort_unstable();
    assert_eq!(serialized, listed, "schema of {} lists every field", T::ID);
    for field in def.fields {
        assert!(
            field.check(&defaults[field.name]).is_ok(),
            "{}#{}: default passes its own schema",
            T::ID,
            field.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn general_schema_matches_struct() {
        assert_schema_matches::<General>();
    }

    #[test]
    fn field_checks_name_the_problem() {
        let f = Field::new("mtu", FieldType::Integer, "").range(1280.0, 9000.0);
        assert!(f.check(&Value::from(1400)).is_ok());
        assert!(f.check(&Value::from(10)).unwrap_err().contains("minimum"));
        assert!(f.check(&Value::from("x")).unwrap_err().contains("integer"));
        let f = Field::new("p", FieldType::String, "").one_of(&["tcp", "udp"]);
        assert!(
            f.check(&Value::from("icmp"))
                .unwrap_err()
                .contains("one of")
        );
    }

    #[test]
    fn standard_registry_has_every_module_item() {
        let ids: Vec<_> = standard().ids().collect();
        for id in [
            "general",
            "parker.node",
            "parker.concentrator",
            "gateway",
            "dataplane.nat",
        ] {
            assert!(ids.contains(&id), "{id} in {ids:?}");
        }
    }
}
