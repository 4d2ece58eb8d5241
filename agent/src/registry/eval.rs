//! Resolution of one subject: layered defaults, then rules, then validation.
//!
//! Semantics (nodewatcher's rules engine, seed 004):
//! - Layers apply in order: item defaults → module base values (e.g. `[parker]`) →
//!   `global` → `projects.<general.project>` → `node_types.<general.node_type>` → the subject's
//!   own table. A later layer replaces single fields, and a multiple item's whole list.
//! - Rules run in file order, depth first. A rule's *state* is its condition's truth plus
//!   every value its condition reads. It fires when the condition holds and that state
//!   differs from the previous evaluation's (edge-triggered), or when its parent fired (which
//!   forces its children). `changed(loc)` holds when `loc` differs from what this rule saw last
//!   time; on the first evaluation nothing counts as changed.
//! - The first evaluation of a subject does not overwrite values a layer set explicitly:
//!   such actions are skipped and listed by `explain`. Later evaluations (reloads) start from
//!   the previous result, take over every input value that changed, and fire rules on edges.
//! - Passes repeat until no rule fires; a rule that fires twice in one evaluation means rules
//!   feed each other: a cycle, reported with the rules involved. Two rules assigning different
//!   values to one location is a conflict unless the later one is marked `override`.
//! - `forbid` rules are checked on the final values (level-triggered).

use super::{
    Item, ItemDef, Registry, RegistryConfig, SubjectKind,
    config::{Action, CmpOp, Cond, Layer, Loc, Operand, Rule, compile_rules, table_fields},
};
use anyhow::{Result, anyhow, bail};
use serde_json::Value;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt::{self, Write},
};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The item struct's `Default`.
    Default,
    /// A module's own configuration (e.g. `[parker] max_mtu`).
    Base(String),
    /// A default layer: `global`, `project ljubljana`, `node <key>`, ...
    Layer(String),
    /// A rule, by path.
    Rule(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("item default"),
            Origin::Base(what) => f.write_str(what),
            Origin::Layer(name) => write!(f, "layer {name}"),
            Origin::Rule(path) => write!(f, "rule {path}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub value: Value,
    pub origin: Origin,
}

type Entry = BTreeMap<String, Slot>;

#[derive(Debug, Clone, PartialEq)]
enum ItemValues {
    Single(Entry),
    Multiple { entries: Vec<Entry>, origin: Origin },
}

/// Values a module's own configuration gives before any layer: (item, field) → (value, what).
pub type Base = Vec<(&'static str, &'static str, Value, String)>;

/// What carries over from one evaluation of a subject to the next (reloads).
#[derive(Debug, Clone, Default)]
pub struct SubjectState {
    input: BTreeMap<String, ItemValues>,
    values: BTreeMap<String, ItemValues>,
    rules: HashMap<String, Value>,
    watched: HashMap<String, Value>,
}

/// The resolved configuration of one subject.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub kind: SubjectKind,
    pub name: String,
    pub layers: Vec<String>,
    /// Rules that fired, in order.
    pub fired: Vec<String>,
    /// Actions skipped on the first evaluation because a layer had set the value.
    pub kept: Vec<String>,
    values: BTreeMap<String, ItemValues>,
    state: SubjectState,
}

/// A compiled `[registry]` section, ready to resolve subjects.
pub struct Resolver {
    registry: Registry,
    config: RegistryConfig,
    rules: Vec<Rule>,
}

impl Resolver {
    /// Compiles rules and checks every layer against the registry.
    pub fn new(registry: Registry, config: RegistryConfig) -> Result<Resolver> {
        let rules = compile_rules(&registry, &config.rules)?;
        let resolver = Resolver {
            registry,
            config,
            rules,
        };
        for (name, layer, own) in resolver.all_layers() {
            for kind in [SubjectKind::Node, SubjectKind::Gateway] {
                if own.is_some_and(|k| k != kind) {
                    continue;
                }
                let mut scratch = BTreeMap::new();
                resolver.apply_layer(&mut scratch, kind, &name, layer, own.is_some(), None)?;
            }
        }
        Ok(resolver)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn all_layers(&self) -> Vec<(String, &Layer, Option<SubjectKind>)> {
        let c = &self.config;
        let mut out = vec![("global".to_string(), &c.global, None)];
        out.extend(
            c.projects
                .iter()
                .map(|(n, l)| (format!("project {n}"), l, None)),
        );
        out.extend(
            c.node_types
                .iter()
                .map(|(n, l)| (format!("node_type {n}"), l, None)),
        );
        out.extend(
            c.nodes
                .iter()
                .map(|(n, l)| (format!("node {n}"), l, Some(SubjectKind::Node))),
        );
        out.extend(
            c.gateways
                .iter()
                .map(|(n, l)| (format!("gateway {n}"), l, Some(SubjectKind::Gateway))),
        );
        out
    }

    /// Listed subjects: nodes then gateways, by name.
    pub fn subjects(&self) -> Vec<(SubjectKind, String)> {
        let nodes = self
            .config
            .nodes
            .keys()
            .map(|k| (SubjectKind::Node, k.clone()));
        let gateways = self
            .config
            .gateways
            .keys()
            .map(|k| (SubjectKind::Gateway, k.clone()));
        nodes.chain(gateways).collect()
    }

    pub fn kind_of(&self, name: &str) -> Option<SubjectKind> {
        if self.config.nodes.contains_key(name) {
            Some(SubjectKind::Node)
        } else if self.config.gateways.contains_key(name) {
            Some(SubjectKind::Gateway)
        } else {
            None
        }
    }

    /// Resolves `name` (a listed subject, or `""`: an unlisted one, which gets only the
    /// shared layers); `prev` is the previous evaluation of the same subject.
    pub fn resolve(
        &self,
        kind: SubjectKind,
        name: &str,
        base: &Base,
        prev: Option<&SubjectState>,
    ) -> Result<Resolution> {
        let subject = if name.is_empty() {
            format!("{} (unlisted)", kind.as_str())
        } else {
            format!("{} {name}", kind.as_str())
        };
        let (input, protected, layers) = self.layered(kind, name, base)?;
        let (start, prev_rules, prev_watched) = match prev {
            Some(p) => (
                patched(&p.values, &p.input, &input),
                p.rules.clone(),
                p.watched.clone(),
            ),
            None => (input.clone(), HashMap::new(), HashMap::new()),
        };
        let mut eval = Eval {
            registry: &self.registry,
            subject: &subject,
            values: start,
            first: prev.is_none(),
            protected: &protected,
            rules: prev_rules,
            watched: prev_watched,
            assigned: HashMap::new(),
            fired: Vec::new(),
            fired_set: HashSet::new(),
            kept: Vec::new(),
        };
        eval.run(&self.rules)?;
        eval.check_forbidden(&self.rules)?;
        validate(&self.registry, &subject, &eval.values)?;
        let state = SubjectState {
            input,
            values: eval.values.clone(),
            rules: eval.rules,
            watched: eval.watched,
        };
        Ok(Resolution {
            kind,
            name: name.to_string(),
            layers,
            fired: eval.fired,
            kept: eval.kept,
            values: eval.values,
            state,
        })
    }

    /// Defaults, base and layers, with the explicitly set locations and the layer names.
    #[allow(clippy::type_complexity)]
    fn layered(
        &self,
        kind: SubjectKind,
        name: &str,
        base: &Base,
    ) -> Result<(BTreeMap<String, ItemValues>, BTreeSet<String>, Vec<String>)> {
        let mut values = BTreeMap::new();
        for def in self.registry.items_for(kind) {
            values.insert(def.id.to_string(), default_values(def));
        }
        for (item, field, value, what) in base {
            if let Some(ItemValues::Single(entry)) = values.get_mut(*item) {
                entry.insert(
                    field.to_string(),
                    Slot {
                        value: value.clone(),
                        origin: Origin::Base(what.clone()),
                    },
                );
            }
        }
        let own = match kind {
            SubjectKind::Node => self.config.nodes.get(name),
            SubjectKind::Gateway => self.config.gateways.get(name),
        };
        let general = |key: &str| -> Option<String> {
            [own, Some(&self.config.global)]
                .into_iter()
                .flatten()
                .find_map(|l| l.get("general")?.get(key)?.as_str().map(str::to_string))
                .filter(|s| !s.is_empty())
        };
        let mut stack = vec![("global".to_string(), &self.config.global, false)];
        if let Some(p) = general("project")
            && let Some(layer) = self.config.projects.get(&p)
        {
            stack.push((format!("project {p}"), layer, false));
        }
        if let Some(t) = general("node_type")
            && let Some(layer) = self.config.node_types.get(&t)
        {
            stack.push((format!("node_type {t}"), layer, false));
        }
        if let Some(layer) = own {
            stack.push((format!("{} {name}", kind.as_str()), layer, true));
        }
        let mut protected = BTreeSet::new();
        for (layer_name, layer, is_own) in &stack {
            self.apply_layer(
                &mut values,
                kind,
                layer_name,
                layer,
                *is_own,
                Some(&mut protected),
            )?;
        }
        Ok((values, protected, stack.into_iter().map(|s| s.0).collect()))
    }

    fn apply_layer(
        &self,
        values: &mut BTreeMap<String, ItemValues>,
        kind: SubjectKind,
        layer_name: &str,
        layer: &Layer,
        own: bool,
        mut protected: Option<&mut BTreeSet<String>>,
    ) -> Result<()> {
        for (id, value) in layer {
            let def = self
                .registry
                .item(id)
                .ok_or_else(|| anyhow!("layer {layer_name}: unknown item {id:?}"))?;
            if !def.kinds.contains(&kind) {
                if own {
                    bail!(
                        "layer {layer_name}: item {id} does not apply to a {}",
                        kind.as_str()
                    );
                }
                continue;
            }
            let origin = Origin::Layer(layer_name.to_string());
            let in_layer = |e: anyhow::Error| anyhow!("layer {layer_name}: {e}");
            if def.multiple {
                let entries = value
                    .as_array()
                    .ok_or_else(|| anyhow!("layer {layer_name}: item {id} is a list of tables"))?
                    .iter()
                    .map(|t| {
                        let table = t.as_table().ok_or_else(|| {
                            anyhow!("layer {layer_name}: item {id} is a list of tables")
                        })?;
                        let fields = table_fields(def, Some(table)).map_err(in_layer)?;
                        Ok(new_entry(def, fields, &origin))
                    })
                    .collect::<Result<Vec<_>>>()?;
                values.insert(id.clone(), ItemValues::Multiple { entries, origin });
                if let Some(p) = protected.as_deref_mut() {
                    p.insert(id.clone());
                }
                continue;
            }
            let table = value
                .as_table()
                .ok_or_else(|| anyhow!("layer {layer_name}: item {id} is a table"))?;
            let fields = table_fields(def, Some(table)).map_err(in_layer)?;
            let Some(ItemValues::Single(entry)) = values.get_mut(id) else {
                continue;
            };
            for (field, value) in fields {
                if let Some(p) = protected.as_deref_mut() {
                    p.insert(format!("{id}#{field}"));
                }
                let origin = origin.clone();
                entry.insert(field, Slot { value, origin });
            }
        }
        Ok(())
    }
}

fn default_values(def: &ItemDef) -> ItemValues {
    if def.multiple {
        return ItemValues::Multiple {
            entries: Vec::new(),
            origin: Origin::Default,
        };
    }
    ItemValues::Single(new_entry(def, serde_json::Map::new(), &Origin::Default))
}

/// An entry with the item's defaults, overwritten by `fields` from `origin`.
fn new_entry(def: &ItemDef, fields: serde_json::Map<String, Value>, origin: &Origin) -> Entry {
    let mut entry: Entry = def
        .default_fields()
        .into_iter()
        .map(|(k, value)| {
            let origin = Origin::Default;
            (k, Slot { value, origin })
        })
        .collect();
    for (k, value) in fields {
        let origin = origin.clone();
        entry.insert(k, Slot { value, origin });
    }
    entry
}

fn entry_values(entry: &Entry) -> Value {
    Value::Object(
        entry
            .iter()
            .map(|(k, s)| (k.clone(), s.value.clone()))
            .collect(),
    )
}

fn item_values(item: &ItemValues) -> Value {
    match item {
        ItemValues::Single(e) => entry_values(e),
        ItemValues::Multiple { entries, .. } => entries.iter().map(entry_values).collect(),
    }
}

/// The previous result with every input value that changed since the previous input.
fn patched(
    prev_values: &BTreeMap<String, ItemValues>,
    prev_input: &BTreeMap<String, ItemValues>,
    input: &BTreeMap<String, ItemValues>,
) -> BTreeMap<String, ItemValues> {
    let mut out = prev_values.clone();
    for (id, new) in input {
        let (Some(old), Some(current)) = (prev_input.get(id), out.get_mut(id)) else {
            out.insert(id.clone(), new.clone());
            continue;
        };
        match (new, old, current) {
            (ItemValues::Single(new), ItemValues::Single(old), ItemValues::Single(cur)) => {
                for (field, slot) in new {
                    if old.get(field).map(|s| &s.value) != Some(&slot.value) {
                        cur.insert(field.clone(), slot.clone());
                    }
                }
            }
            (new, old, current) => {
                if item_values(new) != item_values(old) {
                    *current = new.clone();
                }
            }
        }
    }
    out
}

struct Eval<'a> {
    registry: &'a Registry,
    subject: &'a str,
    values: BTreeMap<String, ItemValues>,
    first: bool,
    protected: &'a BTreeSet<String>,
    rules: HashMap<String, Value>,
    watched: HashMap<String, Value>,
    /// Location → (rule, value) assigned in this evaluation, for conflict detection.
    assigned: HashMap<String, (String, Value)>,
    fired: Vec<String>,
    fired_set: HashSet<String>,
    kept: Vec<String>,
}

impl Eval<'_> {
    fn run(&mut self, rules: &[Rule]) -> Result<()> {
        let limit = count_rules(rules) + 2;
        for _pass in 0..limit {
            let before = self.fired.len();
            for rule in rules {
                self.visit(rule, false)?;
            }
            if self.fired.len() == before {
                return Ok(());
            }
        }
        bail!(
            "{}: rules do not settle (cycle among {})",
            self.subject,
            self.fired.join(", ")
        )
    }

    fn visit(&mut self, rule: &Rule, force: bool) -> Result<()> {
        if rule.forbid.is_some() {
            return Ok(());
        }
        let (holds, snapshot) = self.condition(rule, true);
        let before = self.rules.insert(rule.path.clone(), snapshot.clone());
        let fire = holds && (force || before.as_ref() != Some(&snapshot));
        if fire {
            if !self.fired_set.insert(rule.path.clone()) {
                bail!(
                    "{}: rules form a cycle: rule {} fires again after [{}] changed what its \
                     condition reads",
                    self.subject,
                    rule.path,
                    self.fired.join(", ")
                );
            }
            self.fired.push(rule.path.clone());
            for action in &rule.actions {
                self.apply(rule, action)?;
            }
        }
        if holds {
            for child in &rule.children {
                self.visit(child, fire)?;
            }
        }
        Ok(())
    }

    /// The condition's truth and its state (truth plus every value it reads).
    fn condition(&mut self, rule: &Rule, track: bool) -> (bool, Value) {
        let mut reads = Vec::new();
        let holds = self.holds(&rule.cond, &rule.path, track, &mut reads);
        reads.insert(0, Value::Bool(holds));
        (holds, Value::Array(reads))
    }

    fn holds(&mut self, cond: &Cond, path: &str, track: bool, reads: &mut Vec<Value>) -> bool {
        match cond {
            Cond::Always => true,
            Cond::All(terms) => {
                // Evaluate every term so that the state always reads the same values.
                let results: Vec<bool> = terms
                    .iter()
                    .map(|t| self.holds(t, path, track, reads))
                    .collect();
                results.into_iter().all(|b| b)
            }
            Cond::Compare(operand, op, literal) => {
                let value = match operand {
                    Operand::Value(loc) => match self.read(loc).as_slice() {
                        [one] => one.clone(),
                        _ => Value::Null,
                    },
                    Operand::Count(loc) => Value::from(self.count(loc)),
                };
                reads.push(value.clone());
                compare(&value, *op, literal)
            }
            Cond::Contains(loc, literal) => {
                let values = self.read(loc);
                let found = values
                    .iter()
                    .any(|v| v == literal || v.as_array().is_some_and(|a| a.contains(literal)));
                reads.push(Value::Array(values));
                found
            }
            Cond::Changed(loc) => {
                let now = Value::Array(self.read(loc));
                let key = format!("{path}|{loc}");
                let changed = self.watched.get(&key).is_some_and(|old| *old != now);
                if track {
                    self.watched.insert(key, now.clone());
                }
                reads.push(now);
                changed
            }
        }
    }

    fn read(&self, loc: &Loc) -> Vec<Value> {
        let field_of = |e: &Entry| match &loc.field {
            Some(f) => e.get(f).map(|s| s.value.clone()),
            None => Some(entry_values(e)),
        };
        match self.values.get(&loc.item) {
            Some(ItemValues::Single(e)) => field_of(e).into_iter().collect(),
            Some(ItemValues::Multiple { entries, .. }) => match loc.index {
                Some(i) => entries.get(i).and_then(field_of).into_iter().collect(),
                None => entries.iter().filter_map(field_of).collect(),
            },
            None => Vec::new(),
        }
    }

    fn count(&self, loc: &Loc) -> usize {
        let values = self.read(loc);
        match (
            values.as_slice(),
            loc.field.is_some() || loc.index.is_some(),
        ) {
            ([Value::Array(a)], true) => a.len(),
            _ => values.len(),
        }
    }

    fn apply(&mut self, rule: &Rule, action: &Action) -> Result<()> {
        let item = match action {
            Action::Assign { item, .. }
            | Action::Append { item, .. }
            | Action::Remove { item, .. }
            | Action::Clear { item } => item.clone(),
        };
        // Items of another subject kind (a node item on a gateway) are not there: the
        // action does not concern this subject.
        let (Some(def), true) = (self.registry.item(&item), self.values.contains_key(&item)) else {
            return Ok(());
        };
        if def.multiple && self.first && self.protected.contains(&item) {
            self.kept.push(format!(
                "{item}: rule {} not applied; the list was set by a layer (first evaluation)",
                rule.path
            ));
            return Ok(());
        }
        let origin = Origin::Rule(rule.path.clone());
        match action {
            Action::Assign { index, set, .. } => self.assign(rule, &item, *index, set),
            Action::Append { set, .. } => {
                let entry = new_entry(def, set.clone(), &origin);
                let index = self.entries(&item)?.len();
                self.entries(&item)?.push(entry);
                for (field, value) in set {
                    let loc = format!("{item}[{index}]#{field}");
                    self.assigned
                        .insert(loc, (rule.path.clone(), value.clone()));
                }
                self.set_list_origin(&item, origin);
                Ok(())
            }
            Action::Remove {
                index, matching, ..
            } => {
                let entries = self.entries(&item)?;
                match index {
                    Some(i) if *i < entries.len() => {
                        entries.remove(*i);
                    }
                    Some(_) => {}
                    None => entries.retain(|e| {
                        !matching
                            .iter()
                            .all(|(k, v)| e.get(k).is_some_and(|s| s.value == *v))
                    }),
                }
                self.forget_entries(&item);
                self.set_list_origin(&item, origin);
                Ok(())
            }
            Action::Clear { .. } => {
                match self.values.get_mut(&item) {
                    Some(ItemValues::Multiple { entries, .. }) => entries.clear(),
                    Some(ItemValues::Single(entry)) => {
                        *entry = new_entry(def, Default::default(), &origin)
                    }
                    None => {}
                }
                self.forget_entries(&item);
                self.set_list_origin(&item, origin);
                Ok(())
            }
        }
    }

    fn assign(
        &mut self,
        rule: &Rule,
        item: &str,
        index: Option<usize>,
        set: &serde_json::Map<String, Value>,
    ) -> Result<()> {
        for (field, value) in set {
            let loc = match index {
                Some(i) => format!("{item}[{i}]#{field}"),
                None => format!("{item}#{field}"),
            };
            if self.first && self.protected.contains(&loc) {
                self.kept.push(format!(
                    "{loc}: rule {} not applied; a layer set the value (first evaluation)",
                    rule.path
                ));
                continue;
            }
            if let Some((other, old)) = self.assigned.get(&loc)
                && *other != rule.path
                && old != value
                && !rule.may_override
            {
                bail!(
                    "{}: conflicting assignments to {loc}: rule {other} sets {old}, rule {} sets \
                     {value} (mark the later rule `override = true` if it is meant to win)",
                    self.subject,
                    rule.path
                );
            }
            let subject = self.subject;
            let entry = match (self.values.get_mut(item), index) {
                (Some(ItemValues::Single(entry)), None) => entry,
                (Some(ItemValues::Multiple { entries, .. }), Some(i)) => {
                    let len = entries.len();
                    entries.get_mut(i).ok_or_else(|| {
                        anyhow!(
                            "{subject}: rule {}: assign {item}[{i}]: the item has {len} entries",
                            rule.path
                        )
                    })?
                }
                _ => continue,
            };
            let origin = Origin::Rule(rule.path.clone());
            entry.insert(
                field.clone(),
                Slot {
                    value: value.clone(),
                    origin,
                },
            );
            self.assigned
                .insert(loc, (rule.path.clone(), value.clone()));
        }
        Ok(())
    }

    fn entries(&mut self, item: &str) -> Result<&mut Vec<Entry>> {
        match self.values.get_mut(item) {
            Some(ItemValues::Multiple { entries, .. }) => Ok(entries),
            _ => bail!("{}: item {item} is not a list here", self.subject),
        }
    }

    fn set_list_origin(&mut self, item: &str, new: Origin) {
        if let Some(ItemValues::Multiple { origin, .. }) = self.values.get_mut(item) {
            *origin = new;
        }
    }

    fn forget_entries(&mut self, item: &str) {
        let prefix = format!("{item}[");
        self.assigned.retain(|loc, _| !loc.starts_with(&prefix));
    }

    fn check_forbidden(&mut self, rules: &[Rule]) -> Result<()> {
        for rule in rules {
            let (holds, _) = self.condition(rule, false);
            if !holds {
                continue;
            }
            if let Some(message) = &rule.forbid {
                bail!(
                    "{}: rule {} forbids this combination: {message}",
                    self.subject,
                    rule.path
                );
            }
            self.check_forbidden(&rule.children)?;
        }
        Ok(())
    }
}

fn count_rules(rules: &[Rule]) -> usize {
    rules.iter().map(|r| 1 + count_rules(&r.children)).sum()
}

fn compare(value: &Value, op: CmpOp, literal: &Value) -> bool {
    let ordering = match (value.as_f64(), literal.as_f64()) {
        (Some(a), Some(b)) => a.partial_cmp(&b),
        _ => match (value.as_str(), literal.as_str()) {
            (Some(a), Some(b)) => Some(a.cmp(b)),
            _ => None,
        },
    };
    use std::cmp::Ordering::*;
    match op {
        CmpOp::Eq => ordering == Some(Equal) || value == literal,
        CmpOp::Ne => !(ordering == Some(Equal) || value == literal),
        CmpOp::Ge => matches!(ordering, Some(Greater | Equal)),
        CmpOp::Le => matches!(ordering, Some(Less | Equal)),
        CmpOp::Gt => ordering == Some(Greater),
        CmpOp::Lt => ordering == Some(Less),
    }
}

/// Field schema plus the typed struct's own check on every entry.
fn validate(
    registry: &Registry,
    subject: &str,
    values: &BTreeMap<String, ItemValues>,
) -> Result<()> {
    for (id, item) in values {
        let Some(def) = registry.item(id) else {
            continue;
        };
        let entries: Vec<(String, &Entry)> = match item {
            ItemValues::Single(e) => vec![(id.clone(), e)],
            ItemValues::Multiple { entries, .. } => entries
                .iter()
                .enumerate()
                .map(|(i, e)| (format!("{id}[{i}]"), e))
                .collect(),
        };
        for (name, entry) in entries {
            for (field, slot) in entry {
                if let Some(spec) = def.field(field) {
                    spec.check(&slot.value).map_err(|e| {
                        anyhow!(
                            "{subject}: item {name}, field {field}: {e} (set by {})",
                            slot.origin
                        )
                    })?;
                }
            }
            def.check_typed(&entry_values(entry))
                .map_err(|e| anyhow!("{subject}: item {name}: {e}"))?;
        }
    }
    Ok(())
}

impl Resolution {
    /// The typed value of a single item.
    pub fn get<T: Item>(&self) -> Option<T> {
        let item = self.values.get(T::ID)?;
        serde_json::from_value(item_values(item)).ok()
    }

    /// The typed entries of a multiple item.
    pub fn list<T: Item>(&self) -> Vec<T> {
        self.values
            .get(T::ID)
            .and_then(|item| serde_json::from_value(item_values(item)).ok())
            .unwrap_or_default()
    }

    /// The value and origin at `item#field` or `item[i]#field`.
    pub fn slot(&self, loc: &str) -> Option<&Slot> {
        let (head, field) = loc.split_once('#')?;
        let (item, index) = match head.split_once('[') {
            Some((item, rest)) => (item, rest.strip_suffix(']')?.parse::<usize>().ok()),
            None => (head, None),
        };
        match (self.values.get(item)?, index) {
            (ItemValues::Single(e), None) => e.get(field),
            (ItemValues::Multiple { entries, .. }, Some(i)) => entries.get(i)?.get(field),
            _ => None,
        }
    }

    /// What carries over to the next evaluation of this subject.
    pub fn state(&self) -> &SubjectState {
        &self.state
    }

    /// Every value with the layer or rule that set it.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let name = if self.name.is_empty() {
            "(unlisted)"
        } else {
            &self.name
        };
        let _ = writeln!(out, "{} {name}", self.kind.as_str());
        let _ = writeln!(out, "  layers: {}", self.layers.join(" -> "));
        let fired = if self.fired.is_empty() {
            "none".to_string()
        } else {
            self.fired.join(", ")
        };
        let _ = writeln!(out, "  rules fired: {fired}");
        let mut lines = Vec::new();
        for (id, item) in &self.values {
            match item {
                ItemValues::Single(entry) => push_entry(&mut lines, id, entry),
                ItemValues::Multiple { entries, origin } => {
                    lines.push((id.to_string(), format!("{} entries", entries.len()), origin));
                    for (i, entry) in entries.iter().enumerate() {
                        push_entry(&mut lines, &format!("{id}[{i}]"), entry);
                    }
                }
            }
        }
        let width = lines
            .iter()
            .map(|(l, v, _)| l.len() + v.len())
            .max()
            .unwrap_or(0)
            + 3;
        for (loc, value, origin) in lines {
            let pad = width.saturating_sub(loc.len() + value.len());
            let _ = writeln!(out, "  {loc} = {value}{:pad$}({origin})", "");
        }
        for kept in &self.kept {
            let _ = writeln!(out, "  kept: {kept}");
        }
        out
    }
}

fn push_entry<'a>(lines: &mut Vec<(String, String, &'a Origin)>, name: &str, entry: &'a Entry) {
    for (field, slot) in entry {
        lines.push((
            format!("{name}#{field}"),
            slot.value.to_string(),
            &slot.origin,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{gateway_items::NatForward, standard};

    fn resolver(text: &str) -> Resolver {
        let config: crate::config::Config = toml::from_str(text).unwrap();
        Resolver::new(standard(), config.registry.unwrap_or_default()).unwrap()
    }

    const GW: &str = "[registry.gateways.gw1]\n\"dataplane.nat\" = [\
        { port = 80, to = \"10.0.0.2:80\" }, { protocol = \"udp\", port = 53, to = \"10.0.0.3:53\" }]\n";

    #[test]
    fn comparisons_on_numbers_and_strings() {
        let n = |v: i64| Value::from(v);
        assert!(compare(&n(2), CmpOp::Ge, &n(2)) && !compare(&n(1), CmpOp::Ge, &n(2)));
        assert!(compare(&Value::from(2.0), CmpOp::Eq, &n(2)));
        assert!(compare(&Value::from("b"), CmpOp::Gt, &Value::from("a")));
        assert!(!compare(&Value::from("1"), CmpOp::Eq, &n(1)), "no coercion");
        assert!(compare(&Value::Null, CmpOp::Ne, &n(1)));
    }

    #[test]
    fn remove_by_match_and_first_evaluation_keeps_layer_lists() {
        let rule = "[[registry.rules]]\nname = \"no-dns\"\n\
                    do = [{ remove = \"dataplane.nat\", matching = { protocol = \"udp\" } }]\n";
        let r = resolver(&format!("{GW}{rule}"));
        let first = r
            .resolve(SubjectKind::Gateway, "gw1", &Vec::new(), None)
            .unwrap();
        assert_eq!(
            first.list::<NatForward>().len(),
            2,
            "the layer's list is kept"
        );
        assert!(
            first.kept[0].contains("rule no-dns not applied"),
            "{:?}",
            first.kept
        );
        // Without the layer's list the rule's own entries are removable.
        let own = "[registry.gateways.gw2]\ngeneral = { tags = [\"x\"] }\n\
                   [[registry.rules]]\nname = \"add\"\n\
                   do = [{ append = \"dataplane.nat\", set = { protocol = \"udp\", port = 53, to = \"10.0.0.3:53\" } },\
                         { append = \"dataplane.nat\", set = { port = 22, to = \"10.0.0.4:22\" } }]\n";
        let r = resolver(&format!("{own}{rule}"));
        let res = r
            .resolve(SubjectKind::Gateway, "gw2", &Vec::new(), None)
            .unwrap();
        let ports: Vec<u32> = res.list::<NatForward>().iter().map(|f| f.port).collect();
        assert_eq!(ports, [22]);
        assert_eq!(res.fired, ["add", "no-dns"]);
    }

    #[test]
    fn reload_takes_changed_inputs_and_keeps_rule_values() {
        let text = |retry: u32| {
            format!(
                "[registry.global]\n\"parker.node\" = {{ retry = {retry} }}\n\
                 [[registry.rules]]\nname = \"ka\"\nwhen = \"general#tunnels >= 1\"\n\
                 do = [{{ assign = \"parker.node\", set = {{ wg_keepalive = 5 }} }}]\n"
            )
        };
        let first = resolver(&text(60))
            .resolve(SubjectKind::Node, "", &Vec::new(), None)
            .unwrap();
        let second = resolver(&text(90))
            .resolve(SubjectKind::Node, "", &Vec::new(), Some(first.state()))
            .unwrap();
        assert!(second.fired.is_empty(), "{:?}", second.fired);
        let slot = |r: &Resolution, loc: &str| r.slot(loc).unwrap().clone();
        assert_eq!(slot(&second, "parker.node#retry").value, Value::from(90));
        assert_eq!(
            slot(&second, "parker.node#wg_keepalive").origin,
            Origin::Rule("ka".into()),
            "a rule's value survives a reload that does not re-fire it"
        );
    }

    #[test]
    fn layer_errors_name_layer_item_and_field() {
        let config: crate::config::Config =
            toml::from_str("[registry.projects.lj]\n\"parker.node\" = { mtu = \"big\" }\n")
                .unwrap();
        let err = Resolver::new(standard(), config.registry.unwrap())
            .err()
            .unwrap();
        let text = format!("{err:#}");
        assert!(
            text.contains("layer project lj") && text.contains("parker.node, field mtu"),
            "{text}"
        );
        let config: crate::config::Config =
            toml::from_str("[registry.gateways.g]\n\"parker.node\" = { mtu = 1400 }\n").unwrap();
        let err = Resolver::new(standard(), config.registry.unwrap())
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("does not apply to a gateway"),
            "{err}"
        );
    }
}
