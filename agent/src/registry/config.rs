//! The `[registry]` section of exitd.toml and its compilation against a [`Registry`].
//!
//! ```toml
//! [registry.global]                          # layer 1: every subject
//! "parker.node" = { wg_keepalive = 25 }
//! [registry.projects.ljubljana]              # layer 2: general.project = "ljubljana"
//! "parker.node" = { retry = 60 }
//! [registry.node_types.outdoor]              # layer 3: general.node_type = "outdoor"
//! "parker.node" = { mtu = 1300 }
//! [registry.nodes."<WireGuard public key>"]  # layer 4: one node (gateways: [registry.gateways.<name>])
//! general = { project = "ljubljana", node_type = "outdoor", tunnels = 2 }
//!
//! [[registry.rules]]
//! name = "first-tunnel"
//! when = "general#tunnels >= 1"              # ==  !=  >=  <=  >  <  count(item)  contains(loc, v)  changed(loc)  and
//! do = [{ append = "parker.concentrator", set = { pop = "vie01" } }]
//!
//! [[registry.rules]]
//! name = "ljubljana"
//! when = "general#project == 'ljubljana'"
//! override = true                            # may replace values earlier rules set
//! [[registry.rules.rules]]                   # nested: forced when the parent fires
//! name = "first"
//! when = "general#tunnels >= 1"
//! do = [{ assign = "parker.concentrator", index = 0, set = { pop = "lju01" } }]
//!
//! [[registry.rules]]
//! name = "no-nat-on-lab"
//! when = "contains(general#tags, 'lab') and count(dataplane.nat) > 0"
//! forbid = "lab gateways must not forward ports"
//! ```
//!
//! Locations are `item#field`, `item[index]#field` (one entry of a multiple item) or `item`
//! (a whole item, for `count`, `changed`, `clear`).

use super::{ItemDef, Registry};
use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

/// A layer: item id → table (single item) or array of tables (multiple item).
pub type Layer = BTreeMap<String, toml::Value>;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub global: Layer,
    #[serde(default)]
    pub projects: BTreeMap<String, Layer>,
    #[serde(default)]
    pub node_types: BTreeMap<String, Layer>,
    /// Single Parker nodes by WireGuard public key.
    #[serde(default)]
    pub nodes: BTreeMap<String, Layer>,
    /// Exit gateways by name.
    #[serde(default)]
    pub gateways: BTreeMap<String, Layer>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// The condition; absent: always true.
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default, rename = "do")]
    pub actions: Vec<ActionSpec>,
    /// Reject the configuration with this message when the condition holds.
    #[serde(default)]
    pub forbid: Option<String>,
    /// This rule and its nested rules may replace values that earlier rules set.
    #[serde(default, rename = "override")]
    pub override_: bool,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// One action: exactly one of `assign`, `append`, `remove`, `clear` names the item.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    #[serde(default)]
    pub assign: Option<String>,
    #[serde(default)]
    pub append: Option<String>,
    #[serde(default)]
    pub remove: Option<String>,
    #[serde(default)]
    pub clear: Option<String>,
    /// Entry of a multiple item (`assign`, `remove`).
    #[serde(default)]
    pub index: Option<usize>,
    /// `remove`: every entry whose fields equal these.
    #[serde(default)]
    pub matching: Option<toml::Table>,
    /// Field values (`assign`, `append`).
    #[serde(default)]
    pub set: Option<toml::Table>,
}

/// A location in a subject's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    pub item: String,
    pub index: Option<usize>,
    pub field: Option<String>,
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.item)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        if let Some(field) = &self.field {
            write!(f, "#{field}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Value(Loc),
    Count(Loc),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Always,
    Compare(Operand, CmpOp, Value),
    Contains(Loc, Value),
    Changed(Loc),
    All(Vec<Cond>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Assign {
        item: String,
        index: Option<usize>,
        set: serde_json::Map<String, Value>,
    },
    Append {
        item: String,
        set: serde_json::Map<String, Value>,
    },
    Remove {
        item: String,
        index: Option<usize>,
        matching: serde_json::Map<String, Value>,
    },
    Clear {
        item: String,
    },
}

/// A compiled rule; `path` is the names from the top rule down, joined by `/`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub path: String,
    pub cond: Cond,
    pub actions: Vec<Action>,
    pub forbid: Option<String>,
    /// Set on this rule or inherited from an ancestor.
    pub may_override: bool,
    pub children: Vec<Rule>,
}

/// Compiles the rules; errors name the rule.
pub fn compile_rules(registry: &Registry, specs: &[RuleSpec]) -> Result<Vec<Rule>> {
    let mut seen = HashSet::new();
    specs
        .iter()
        .map(|spec| compile_rule(registry, spec, "", false, &mut seen))
        .collect()
}

fn compile_rule(
    registry: &Registry,
    spec: &RuleSpec,
    parent: &str,
    inherited_override: bool,
    seen: &mut HashSet<String>,
) -> Result<Rule> {
    ensure!(
        !spec.name.is_empty() && !spec.name.contains('/'),
        "a rule under {:?} has an empty name or one containing '/'",
        if parent.is_empty() {
            "[registry]"
        } else {
            parent
        }
    );
    let path = if parent.is_empty() {
        spec.name.clone()
    } else {
        format!("{parent}/{}", spec.name)
    };
    ensure!(seen.insert(path.clone()), "rule {path:?} is defined twice");
    let cond = match &spec.when {
        Some(text) => parse_cond(text, registry).with_context(|| format!("rule {path:?}: when"))?,
        None => Cond::Always,
    };
    let actions = spec
        .actions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            compile_action(registry, a).with_context(|| format!("rule {path:?}: do[{i}]"))
        })
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        !(spec.forbid.is_some() && (!actions.is_empty() || !spec.rules.is_empty())),
        "rule {path:?}: a forbid rule has no actions or nested rules"
    );
    let may_override = inherited_override || spec.override_;
    let children = spec
        .rules
        .iter()
        .map(|child| compile_rule(registry, child, &path, may_override, seen))
        .collect::<Result<Vec<_>>>()?;
    Ok(Rule {
        path,
        cond,
        actions,
        forbid: spec.forbid.clone(),
        may_override,
        children,
    })
}

fn compile_action(registry: &Registry, spec: &ActionSpec) -> Result<Action> {
    let verbs = [
        ("assign", &spec.assign),
        ("append", &spec.append),
        ("remove", &spec.remove),
        ("clear", &spec.clear),
    ];
    let named: Vec<_> = verbs.iter().filter(|(_, v)| v.is_some()).collect();
    ensure!(
        named.len() == 1,
        "give exactly one of assign, append, remove, clear"
    );
    let (verb, item) = (named[0].0, named[0].1.clone().unwrap_or_default());
    let def = registry
        .item(&item)
        .ok_or_else(|| anyhow!("{verb}: unknown item {item:?}"))?;
    let set = table_fields(def, spec.set.as_ref())?;
    let matching = table_fields(def, spec.matching.as_ref())?;
    match verb {
        "assign" => {
            ensure!(!set.is_empty(), "assign {item}: `set` names no field");
            ensure!(
                def.multiple == spec.index.is_some(),
                "assign {item}: {}",
                if def.multiple {
                    "a multiple item needs `index`"
                } else {
                    "a single item takes no `index`"
                }
            );
            Ok(Action::Assign {
                item,
                index: spec.index,
                set,
            })
        }
        "append" => {
            ensure!(
                def.multiple,
                "append {item}: only multiple items take append"
            );
            Ok(Action::Append { item, set })
        }
        "remove" => {
            ensure!(
                def.multiple,
                "remove {item}: only multiple items take remove"
            );
            ensure!(
                spec.index.is_some() == matching.is_empty(),
                "remove {item}: give `index` or `matching`"
            );
            Ok(Action::Remove {
                item,
                index: spec.index,
                matching,
            })
        }
        _ => Ok(Action::Clear { item }),
    }
}

/// Converts a TOML table of field values, checking each against the item's schema.
pub fn table_fields(
    def: &ItemDef,
    table: Option<&toml::Table>,
) -> Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    for (name, value) in table.into_iter().flatten() {
        let field = def
            .field(name)
            .ok_or_else(|| anyhow!("item {}: unknown field {name:?}", def.id))?;
        let value = serde_json::to_value(value)?;
        field
            .check(&value)
            .map_err(|e| anyhow!("item {}, field {name}: {e}", def.id))?;
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// Parses `item`, `item#field`, `item[i]#field`, checking them against the registry.
pub fn parse_loc(text: &str, registry: &Registry) -> Result<Loc> {
    let text = text.trim();
    let (head, field) = match text.split_once('#') {
        Some((h, f)) => (h, Some(f.to_string())),
        None => (text, None),
    };
    let (item, index) = match head.split_once('[') {
        Some((item, rest)) => {
            let i = rest
                .strip_suffix(']')
                .and_then(|i| i.parse::<usize>().ok())
                .ok_or_else(|| anyhow!("{text:?}: index must be [number]"))?;
            (item.to_string(), Some(i))
        }
        None => (head.to_string(), None),
    };
    let def = registry
        .item(&item)
        .ok_or_else(|| anyhow!("unknown item {item:?} in {text:?}"))?;
    if let Some(f) = &field {
        ensure!(
            def.field(f).is_some(),
            "item {item} has no field {f:?} (in {text:?})"
        );
    }
    ensure!(
        index.is_none() || def.multiple,
        "{text:?}: {item} is a single item; it takes no index"
    );
    Ok(Loc { item, index, field })
}

/// Parses a condition: `term (and term)*` where a term is `changed(loc)`,
/// `contains(loc, literal)` or `operand op literal` with operand `loc` or `count(loc)`.
pub fn parse_cond(text: &str, registry: &Registry) -> Result<Cond> {
    let terms: Vec<Cond> = split_and(text)
        .into_iter()
        .map(|t| parse_term(t, registry))
        .collect::<Result<_>>()?;
    Ok(match terms.len() {
        1 => terms.into_iter().next().unwrap_or(Cond::Always),
        _ => Cond::All(terms),
    })
}

/// Splits on ` and ` outside quotes.
fn split_and(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quote, mut start) = (None, 0);
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if bytes[i..].starts_with(b" and ") => {
                parts.push(&text[start..i]);
                start = i + 5;
                i += 4;
            }
            None => {}
        }
        i += 1;
    }
    parts.push(&text[start..]);
    parts
}

fn parse_term(term: &str, registry: &Registry) -> Result<Cond> {
    let term = term.trim();
    if let Some(inner) = call_args(term, "changed") {
        return Ok(Cond::Changed(parse_loc(inner, registry)?));
    }
    if let Some(inner) = call_args(term, "contains") {
        let (loc, literal) = inner
            .split_once(',')
            .ok_or_else(|| anyhow!("contains(location, value) needs two arguments"))?;
        return Ok(Cond::Contains(
            parse_loc(loc, registry)?,
            parse_literal(literal)?,
        ));
    }
    const OPS: [(&str, CmpOp); 6] = [
        ("==", CmpOp::Eq),
        ("!=", CmpOp::Ne),
        (">=", CmpOp::Ge),
        ("<=", CmpOp::Le),
        (">", CmpOp::Gt),
        ("<", CmpOp::Lt),
    ];
    let Some((at, text, op)) = OPS
        .iter()
        .find_map(|(text, op)| term.find(text).map(|at| (at, *text, *op)))
    else {
        bail!("{term:?}: expected changed(..), contains(..) or a comparison (== != >= <= > <)");
    };
    let (lhs, rhs) = (term[..at].trim(), &term[at + text.len()..]);
    let operand = match call_args(lhs, "count") {
        Some(inner) => Operand::Count(parse_loc(inner, registry)?),
        None => Operand::Value(parse_loc(lhs, registry)?),
    };
    Ok(Cond::Compare(operand, op, parse_literal(rhs)?))
}

fn call_args<'a>(term: &'a str, name: &str) -> Option<&'a str> {
    term.strip_prefix(name)?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')
}

/// `'text'`, `"text"`, numbers, `true`, `false`.
fn parse_literal(text: &str) -> Result<Value> {
    let text = text.trim();
    for q in ['\'', '"'] {
        if let Some(s) = text.strip_prefix(q).and_then(|t| t.strip_suffix(q)) {
            return Ok(Value::from(s));
        }
    }
    match text {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Value::from(i));
    }
    text.parse::<f64>()
        .ok()
        .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
        .ok_or_else(|| anyhow!("{text:?} is not a literal ('text', number, true, false)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registry {
        super::super::standard()
    }

    #[test]
    fn conditions_parse() {
        let r = reg();
        let c = parse_cond("general#tunnels >= 2", &r).unwrap();
        assert!(
            matches!(c, Cond::Compare(Operand::Value(_), CmpOp::Ge, ref v) if v == &Value::from(2))
        );
        let c = parse_cond(
            "general#project == 'a and b' and count(parker.concentrator) < 3",
            &r,
        )
        .unwrap();
        let Cond::All(terms) = c else {
            panic!("two terms")
        };
        assert_eq!(
            terms[0],
            Cond::Compare(
                Operand::Value(parse_loc("general#project", &r).unwrap()),
                CmpOp::Eq,
                Value::from("a and b")
            )
        );
        assert!(matches!(
            parse_cond("changed(general#tunnels)", &r).unwrap(),
            Cond::Changed(_)
        ));
        assert!(matches!(
            parse_cond("contains(general#tags, \"lab\")", &r).unwrap(),
            Cond::Contains(_, _)
        ));
    }

    #[test]
    fn bad_conditions_name_the_problem() {
        let r = reg();
        let err = parse_cond("general#colour == 1", &r).unwrap_err();
        assert!(err.to_string().contains("no field \"colour\""), "{err}");
        let err = parse_cond("nope#x == 1", &r).unwrap_err();
        assert!(err.to_string().contains("unknown item \"nope\""), "{err}");
        assert!(parse_cond("general#tunnels ~ 1", &r).is_err());
        assert!(parse_cond("general#tunnels == bare", &r).is_err());
        assert!(parse_cond("general[0]#tunnels == 1", &r).is_err());
        // Non-ASCII outside quotes is an error, never a panic.
        assert!(parse_cond("general#project == ljubljanä and ü", &r).is_err());
        assert!(parse_cond("general#project == 'žiri' and general#tunnels > 0", &r).is_ok());
    }

    proptest::proptest! {
        /// Conditions come from a file: any text is parsed or refused, never a panic.
        #[test]
        fn condition_parser_never_panics(text in "(general#tunnels|count\\(|contains\\(| and |[a-z#\\[\\]0-9()'\" =<>!,.üž]){0,12}") {
            let _ = parse_cond(&text, &reg());
        }
    }

    #[test]
    fn actions_are_checked_against_the_schema() {
        let r = reg();
        let spec: RuleSpec =
            toml::from_str("name = \"x\"\ndo = [{ assign = \"parker.node\", set = { mtu = 10 } }]")
                .unwrap();
        let err = compile_rules(&r, &[spec]).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("rule \"x\"") && text.contains("parker.node, field mtu"),
            "{text}"
        );
        let spec: RuleSpec =
            toml::from_str("name = \"y\"\ndo = [{ append = \"parker.node\", set = {} }]").unwrap();
        assert!(format!("{:#}", compile_rules(&r, &[spec]).unwrap_err()).contains("only multiple"));
    }
}
