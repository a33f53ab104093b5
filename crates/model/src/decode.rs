//! YAML tree → [`RawConfig`]: keys, types, enum values, durations and number ranges.
//!
//! Every check here looks at one value (or one map) at a time, so decoding never stops early:
//! a bad value is reported and replaced by a placeholder, and decoding goes on. Relations between
//! entities are `build`'s job. Unknown keys are errors everywhere: a typo in an optional key
//! would otherwise silently fall back to a default.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::defaults;
use crate::duration;
use crate::entities::{
    CompKind, Healthcheck, InstantiationPolicy, Probation, Recovery, Timeouts, VmAccel, VmDriver,
    VmForward, VmHealth, VmProbe,
};
use crate::error::{Diagnostics, Pos};
use crate::raw::{
    Entry, RawApp, RawComp, RawConfig, RawCsi, RawNode, RawSg, RawSi, RawSu, RawVm, RedundancyKind,
    Sp,
};
use crate::yaml::{Node, Value};

/// Config spellings of the redundancy models.
pub(crate) const REDUNDANCY_NAMES: [(&str, RedundancyKind); 5] = [
    ("2n", RedundancyKind::TwoN),
    ("n+m", RedundancyKind::NPlusM),
    ("n-way", RedundancyKind::NWay),
    ("n-way-active", RedundancyKind::NWayActive),
    ("no-redundancy", RedundancyKind::NoRedundancy),
];

/// Config spellings of the component kinds.
pub(crate) const KIND_NAMES: [(&str, CompKind); 3] = [
    ("sa-aware", CompKind::SaAware),
    ("process", CompKind::Process),
    ("vm", CompKind::Vm),
];

/// Config spellings of the VM accelerators.
pub(crate) const ACCEL_NAMES: [(&str, VmAccel); 3] = [
    ("tcg", VmAccel::Tcg),
    ("kvm", VmAccel::Kvm),
    ("auto", VmAccel::Auto),
];

/// Config spellings of the VM drivers.
pub(crate) const DRIVER_NAMES: [(&str, VmDriver); 2] =
    [("qemu", VmDriver::Qemu), ("libvirt", VmDriver::Libvirt)];

/// Names that would make an app's entity paths ambiguous with `node/NAME` and `cluster`.
pub(crate) const RESERVED_APP_NAMES: [&str; 2] = ["node", "cluster"];

const TOP_KEYS: &[&str] = &["cluster", "nodes", "apps"];
const NODE_KEYS: &[&str] = &["escalation", "vm"];
const NODE_ESCALATION_KEYS: &[&str] = &["su_failover"];
const APP_KEYS: &[&str] = &["sgs", "sis"];
const SG_KEYS: &[&str] = &[
    "redundancy",
    "active_sus",
    "standby_sus",
    "fail_back",
    "auto_repair",
    "max_active_sis_per_su",
    "max_standby_sis_per_su",
    "escalation",
    "units",
    "components",
];
const SG_ESCALATION_KEYS: &[&str] = &["comp_restart", "su_restart"];
const PROBATION_KEYS: &[&str] = &["max", "within"];
const SU_KEYS: &[&str] = &["node", "rank", "locked_instantiation", "vm"];
const COMP_KEYS: &[&str] = &[
    "kind",
    "instantiate",
    "terminate",
    "cleanup",
    "monitor",
    "timeouts",
    "healthcheck",
    "recovery",
    "instantiation",
    "vm",
];
const VM_KEYS: &[&str] = &[
    "kernel",
    "initrd",
    "memory",
    "cpus",
    "accel",
    "driver",
    "forwards",
    "health",
    "cmdline_extra",
    "migrate",
];
const FORWARD_KEYS: &[&str] = &["host", "guest"];
const VM_HEALTH_KEYS: &[&str] = &["http", "tcp", "expect", "period", "timeout"];
const TIMEOUT_KEYS: &[&str] = &["instantiate", "terminate", "cleanup", "callback"];
const HEALTHCHECK_KEYS: &[&str] = &["period", "max_duration"];
const INSTANTIATION_KEYS: &[&str] = &["retries", "delayed_retries", "retry_delay"];
const SI_KEYS: &[&str] = &["sg", "rank", "active", "standbys", "depends_on", "csis"];
const DEPENDENCY_KEYS: &[&str] = &["tolerance"];
const CSI_KEYS: &[&str] = &["component", "attrs"];

/// Decodes the tree, reporting every problem into `diag`. The result is only meaningful when
/// no error was reported, but it is always complete enough for `build` to check relations.
pub(crate) fn decode(root: &Node, diag: &mut Diagnostics) -> RawConfig {
    Decoder { diag }.config(root)
}

/// Recovery spellings, from the model's own names.
fn recovery_names() -> Vec<(&'static str, Recovery)> {
    Recovery::ALL.iter().map(|r| (r.name(), *r)).collect()
}

/// Joins a key path for messages: `escalation` + `within` = `escalation.within`.
fn qualify(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Why `name` is not a valid entity name, if it is not.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains('/') {
        Some("contains '/' (it separates the parts of entity paths)")
    } else if name.chars().any(char::is_whitespace) {
        Some("contains whitespace")
    } else {
        None
    }
}

/// The config spelling of a component kind.
pub(crate) fn kind_name(kind: CompKind) -> &'static str {
    KIND_NAMES
        .iter()
        .find(|(_, k)| *k == kind)
        .map_or("?", |(name, _)| *name)
}

/// `256M`, `256MiB`, `1G`, `1GiB` in MiB.
pub(crate) fn parse_memory(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let scale: u64 = match unit {
        "M" | "MiB" => 1,
        "G" | "GiB" => 1024,
        "" => return Err(format!("`{text}` has no unit")),
        other => return Err(format!("`{text}`: unknown unit `{other}`")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// `IP:PORT` (IPv6 as `[::1]:PORT`). Host names are refused: the agent would have to resolve
/// them on every probe, and resolution is a way to hang.
pub(crate) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not IP:PORT (like 127.0.0.1:18080; names are not resolved)")
    })
}

/// `[http://]IP:PORT[/PATH]` into the address and the request path (`/` when absent).
pub(crate) fn parse_http_target(text: &str) -> Result<(SocketAddr, String), String> {
    let rest = text.strip_prefix("http://").unwrap_or(text);
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr = parse_socket_addr(addr)?;
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the path {path:?} contains whitespace or control characters"
        ));
    }
    Ok((addr, path))
}

/// The keys of one YAML map that passed the unknown-key check.
struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, node)| *node)
    }
}

/// A named child entity: its name, where the name was written and its value node.
struct Named<'n> {
    name: String,
    pos: Pos,
    node: &'n Node,
}

struct Decoder<'d> {
    diag: &'d mut Diagnostics,
}

impl Decoder<'_> {
    fn error(&mut self, pos: Pos, entity: &str, message: impl Into<String>) {
        self.diag.error(pos, entity, message);
    }

    /// Reads a map with a fixed set of keys, reporting other keys. `null` is an empty map, so
    /// `key:` with nothing after it means "all defaults".
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        entity: &str,
        prefix: &str,
        allowed: &[&str],
    ) -> Fields<'n> {
        let mut fields = Fields {
            entries: Vec::new(),
        };
        let entries = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => return fields,
            other => {
                let what = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("`{prefix}`: ")
                };
                self.error(
                    node.pos,
                    entity,
                    format!(
                        "{what}expected a map with keys {}, found {}",
                        allowed.join(", "),
                        other.kind()
                    ),
                );
                return fields;
            }
        };
        for (key, value) in entries {
            match &key.value {
                Value::Str(k) if allowed.contains(&k.as_str()) => {
                    fields.entries.push((k.as_str(), value));
                }
                Value::Str(k) => self.error(
                    key.pos,
                    entity,
                    format!(
                        "unknown key `{}` (allowed here: {})",
                        qualify(prefix, k),
                        allowed.join(", ")
                    ),
                ),
                other => self.error(
                    key.pos,
                    entity,
                    format!(
                        "keys must be strings, found {} (allowed here: {})",
                        other.kind(),
                        allowed.join(", ")
                    ),
                ),
            }
        }
        fields
    }

    /// Reads a map from entity names to entity definitions; checks each name. `child_path` makes
    /// the entity path of a child from its name, for messages about a bad name.
    fn named<'n>(
        &mut self,
        node: &'n Node,
        entity: &str,
        key: &str,
        child_path: &dyn Fn(&str) -> String,
    ) -> Vec<Named<'n>> {
        let entries = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => return Vec::new(),
            other => {
                self.error(
                    node.pos,
                    entity,
                    format!("`{key}`: expected a map of names, found {}", other.kind()),
                );
                return Vec::new();
            }
        };
        let mut out: Vec<Named<'n>> = Vec::new();
        let mut seen = HashSet::new();
        for (k, value) in entries {
            let Some(name) = self.name_of(k, entity, key) else {
                continue;
            };
            // YAML sees `1` and `"1"` as different keys; as names they are the same.
            if !seen.insert(name.clone()) {
                self.error(
                    k.pos,
                    &child_path(&name),
                    format!("`{key}`: the name `{name}` is used twice"),
                );
                continue;
            }
            self.check_name(&name, k.pos, &child_path(&name));
            out.push(Named {
                name,
                pos: k.pos,
                node: value,
            });
        }
        out
    }

    /// A name written as a map key or list item: a string, or a plain integer taken as text.
    fn name_of(&mut self, node: &Node, entity: &str, key: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            other => {
                self.error(
                    node.pos,
                    entity,
                    format!("`{key}`: a name must be a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn check_name(&mut self, name: &str, pos: Pos, entity: &str) {
        if let Some(problem) = name_problem(name) {
            self.error(pos, entity, format!("name `{name}` {problem}"));
        }
    }

    fn string(&mut self, node: &Node, entity: &str, key: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            other => {
                self.error(
                    node.pos,
                    entity,
                    format!("`{key}`: expected a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A string where numbers and booleans are also fine (argv items, attributes): `--port,
    /// 7100` should not need quotes. Floats must be quoted, their spelling would change.
    fn text(&mut self, node: &Node, entity: &str, key: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.error(
                    node.pos,
                    entity,
                    format!(
                        "`{key}`: expected a string, found {} (quote it)",
                        other.kind()
                    ),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, entity: &str, key: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            other => {
                self.error(
                    node.pos,
                    entity,
                    format!("`{key}`: expected true or false, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A whole number in `min..=u32::MAX`.
    fn count(&mut self, node: &Node, entity: &str, key: &str, min: u32) -> Option<u32> {
        match &node.value {
            Value::Int(i) if *i < i128::from(min) => {
                self.error(
                    node.pos,
                    entity,
                    format!("`{key}` must be at least {min}, found {i}"),
                );
                None
            }
            Value::Int(i) => match u32::try_from(*i) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error(
                        node.pos,
                        entity,
                        format!("`{key}` is too large ({i}; at most {})", u32::MAX),
                    );
                    None
                }
            },
            other => {
                self.error(
                    node.pos,
                    entity,
                    format!("`{key}`: expected a whole number, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn spanned_count(&mut self, node: &Node, entity: &str, key: &str, min: u32) -> Option<Sp<u32>> {
        self.count(node, entity, key, min).map(|value| Sp {
            value,
            pos: node.pos,
        })
    }

    fn duration(&mut self, node: &Node, entity: &str, key: &str) -> Option<Duration> {
        let result = match &node.value {
            Value::Str(s) => duration::parse(s),
            Value::Int(0) => Ok(Duration::ZERO),
            Value::Int(i) => Err(format!("`{i}` has no unit")),
            other => Err(format!("found {}", other.kind())),
        };
        match result {
            Ok(d) => Some(d),
            Err(why) => {
                self.error(
                    node.pos,
                    entity,
                    format!(
                        "`{key}`: bad duration: {why}; expected {}",
                        duration::SYNTAX
                    ),
                );
                None
            }
        }
    }

    /// A duration that must be greater than zero (periods and windows).
    fn positive_duration(&mut self, node: &Node, entity: &str, key: &str) -> Option<Duration> {
        let d = self.duration(node, entity, key)?;
        if d.is_zero() {
            self.error(node.pos, entity, format!("`{key}` must be greater than 0"));
            return None;
        }
        Some(d)
    }

    fn choice<T: Copy>(
        &mut self,
        node: &Node,
        entity: &str,
        key: &str,
        table: &[(&str, T)],
    ) -> Option<T> {
        let allowed = || {
            table
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &node.value {
            Value::Str(s) => {
                if let Some((_, v)) = table.iter().find(|(name, _)| name == s) {
                    return Some(*v);
                }
                self.error(
                    node.pos,
                    entity,
                    format!("`{key}`: unknown value `{s}` (allowed: {})", allowed()),
                );
                None
            }
            other => {
                // `2n` is a string, but a bare `2` or `1.5` is not: show the allowed spellings.
                self.error(
                    node.pos,
                    entity,
                    format!(
                        "`{key}`: expected one of {}, found {}",
                        allowed(),
                        other.kind()
                    ),
                );
                None
            }
        }
    }

    /// A command line: a non-empty list whose first item (the program) is not empty.
    fn argv(&mut self, node: &Node, entity: &str, key: &str) -> Option<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            self.error(
                node.pos,
                entity,
                format!(
                    "`{key}`: expected a command as a list of arguments, like [/usr/bin/prog, --flag], found {}",
                    node.value.kind()
                ),
            );
            return None;
        };
        let mut argv = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match self.text(item, entity, key) {
                Some(arg) => argv.push(arg),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        match argv.first() {
            None => {
                self.error(node.pos, entity, format!("`{key}`: the command is empty"));
                None
            }
            Some(program) if program.is_empty() => {
                self.error(
                    node.pos,
                    entity,
                    format!("`{key}`: the program name is empty"),
                );
                None
            }
            Some(_) => Some(argv),
        }
    }

    fn probation(&mut self, node: &Node, entity: &str, key: &str, default: Probation) -> Probation {
        let f = self.fields(node, entity, key, PROBATION_KEYS);
        let mut p = default;
        if let Some(n) = f.get("max") {
            p.max = self
                .count(n, entity, &qualify(key, "max"), 0)
                .unwrap_or(p.max);
        }
        if let Some(n) = f.get("within") {
            p.within = self
                .positive_duration(n, entity, &qualify(key, "within"))
                .unwrap_or(p.within);
        }
        p
    }

    fn config(&mut self, root: &Node) -> RawConfig {
        let mut raw = RawConfig {
            nodes_pos: root.pos,
            ..RawConfig::default()
        };
        if !matches!(root.value, Value::Map(_)) {
            self.error(
                root.pos,
                "cluster",
                format!(
                    "expected a map with keys {}, found {}",
                    TOP_KEYS.join(", "),
                    root.value.kind()
                ),
            );
            return raw;
        }
        let f = self.fields(root, "cluster", "", TOP_KEYS);
        match f.get("cluster") {
            Some(n) => {
                if let Some(name) = self.string(n, "cluster", "cluster") {
                    self.check_name(&name, n.pos, "cluster");
                    raw.cluster = name;
                }
            }
            None => self.error(
                root.pos,
                "cluster",
                "missing key `cluster` (the cluster's name)",
            ),
        }
        match f.get("nodes") {
            Some(n) => {
                raw.nodes_pos = n.pos;
                raw.nodes = self.nodes(n);
                if raw.nodes.is_empty() {
                    self.error(n.pos, "nodes", "at least one node is required");
                }
            }
            None => self.error(
                root.pos,
                "nodes",
                "missing key `nodes` (at least one node is required)",
            ),
        }
        if let Some(n) = f.get("apps") {
            for app in self.named(n, "apps", "apps", &|name| name.to_string()) {
                if RESERVED_APP_NAMES.contains(&app.name.as_str()) {
                    self.error(
                        app.pos,
                        &app.name,
                        format!(
                            "an app may not be named `{}` (reserved for entity paths)",
                            app.name
                        ),
                    );
                }
                let item = self.app(app.node, &app.name);
                raw.apps.push(Entry {
                    path: app.name.clone(),
                    name: app.name,
                    pos: app.pos,
                    item,
                });
            }
        }
        raw
    }

    fn nodes(&mut self, node: &Node) -> Vec<Entry<RawNode>> {
        let default = || RawNode {
            su_failover: defaults::SU_FAILOVER,
            vm: None,
        };
        match &node.value {
            Value::Seq(items) => {
                let mut out = Vec::new();
                for item in items {
                    let Some(name) = self.name_of(item, "nodes", "nodes") else {
                        continue;
                    };
                    let path = format!("node/{name}");
                    self.check_name(&name, item.pos, &path);
                    out.push(Entry {
                        name,
                        pos: item.pos,
                        path,
                        item: default(),
                    });
                }
                out
            }
            Value::Map(_) => {
                let mut out = Vec::new();
                for n in self.named(node, "nodes", "nodes", &|name| format!("node/{name}")) {
                    let path = format!("node/{}", n.name);
                    let f = self.fields(n.node, &path, "", NODE_KEYS);
                    let mut item = default();
                    if let Some(esc) = f.get("escalation") {
                        let e = self.fields(esc, &path, "escalation", NODE_ESCALATION_KEYS);
                        if let Some(p) = e.get("su_failover") {
                            item.su_failover = self.probation(
                                p,
                                &path,
                                "escalation.su_failover",
                                defaults::SU_FAILOVER,
                            );
                        }
                    }
                    if let Some(v) = f.get("vm") {
                        if let Some(text) = self.string(v, &path, "vm") {
                            item.vm = Some(Sp {
                                value: text,
                                pos: v.pos,
                            });
                        }
                    }
                    out.push(Entry {
                        name: n.name,
                        pos: n.pos,
                        path,
                        item,
                    });
                }
                out
            }
            other => {
                self.error(
                    node.pos,
                    "nodes",
                    format!(
                        "expected a list of node names or a map of nodes, found {}",
                        other.kind()
                    ),
                );
                Vec::new()
            }
        }
    }

    fn app(&mut self, node: &Node, app: &str) -> RawApp {
        let f = self.fields(node, app, "", APP_KEYS);
        let mut raw = RawApp::default();
        if let Some(n) = f.get("sgs") {
            for sg in self.named(n, app, "sgs", &|name| format!("{app}/{name}")) {
                let path = format!("{app}/{}", sg.name);
                let item = self.sg(sg.node, &path, sg.pos);
                raw.sgs.push(Entry {
                    name: sg.name,
                    pos: sg.pos,
                    path,
                    item,
                });
            }
        }
        if let Some(n) = f.get("sis") {
            for si in self.named(n, app, "sis", &|name| format!("{app}/{name}")) {
                let path = format!("{app}/{}", si.name);
                let item = self.si(si.node, &path, si.pos);
                raw.sis.push(Entry {
                    name: si.name,
                    pos: si.pos,
                    path,
                    item,
                });
            }
        }
        raw
    }

    fn sg(&mut self, node: &Node, path: &str, pos: Pos) -> RawSg {
        let f = self.fields(node, path, "", SG_KEYS);
        let mut raw = RawSg {
            redundancy: None,
            active_sus: None,
            standby_sus: None,
            fail_back: defaults::FAIL_BACK,
            auto_repair: defaults::AUTO_REPAIR,
            max_active_sis_per_su: None,
            max_standby_sis_per_su: None,
            comp_restart: defaults::COMP_RESTART,
            su_restart: defaults::SU_RESTART,
            units: Vec::new(),
            components: Vec::new(),
        };
        match f.get("redundancy") {
            Some(n) => {
                raw.redundancy = self
                    .choice(n, path, "redundancy", &REDUNDANCY_NAMES)
                    .map(|value| Sp { value, pos: n.pos });
            }
            None => {
                let allowed: Vec<_> = REDUNDANCY_NAMES.iter().map(|(name, _)| *name).collect();
                self.error(
                    pos,
                    path,
                    format!("missing key `redundancy` (one of {})", allowed.join(", ")),
                );
            }
        }
        if let Some(n) = f.get("active_sus") {
            raw.active_sus = self.spanned_count(n, path, "active_sus", 1);
        }
        if let Some(n) = f.get("standby_sus") {
            raw.standby_sus = self.spanned_count(n, path, "standby_sus", 1);
        }
        if let Some(n) = f.get("fail_back") {
            raw.fail_back = self.boolean(n, path, "fail_back").unwrap_or(raw.fail_back);
        }
        if let Some(n) = f.get("auto_repair") {
            raw.auto_repair = self
                .boolean(n, path, "auto_repair")
                .unwrap_or(raw.auto_repair);
        }
        if let Some(n) = f.get("max_active_sis_per_su") {
            raw.max_active_sis_per_su = self.spanned_count(n, path, "max_active_sis_per_su", 1);
        }
        if let Some(n) = f.get("max_standby_sis_per_su") {
            raw.max_standby_sis_per_su = self.spanned_count(n, path, "max_standby_sis_per_su", 1);
        }
        if let Some(esc) = f.get("escalation") {
            let e = self.fields(esc, path, "escalation", SG_ESCALATION_KEYS);
            if let Some(p) = e.get("comp_restart") {
                raw.comp_restart =
                    self.probation(p, path, "escalation.comp_restart", defaults::COMP_RESTART);
            }
            if let Some(p) = e.get("su_restart") {
                raw.su_restart =
                    self.probation(p, path, "escalation.su_restart", defaults::SU_RESTART);
            }
        }
        if let Some(n) = f.get("units") {
            for su in self.named(n, path, "units", &|name| format!("{path}/{name}")) {
                let su_path = format!("{path}/{}", su.name);
                let item = self.su(su.node, &su_path, su.pos);
                raw.units.push(Entry {
                    name: su.name,
                    pos: su.pos,
                    path: su_path,
                    item,
                });
            }
        }
        if raw.units.is_empty() {
            self.error(
                pos,
                path,
                "the SG has no SUs: `units` must name at least one",
            );
        }
        if let Some(n) = f.get("components") {
            for comp in self.named(n, path, "components", &|name| format!("{path}/*/{name}")) {
                let comp_path = format!("{path}/*/{}", comp.name);
                let item = self.comp(comp.node, &comp_path, comp.pos);
                raw.components.push(Entry {
                    name: comp.name,
                    pos: comp.pos,
                    path: comp_path,
                    item,
                });
            }
        }
        if raw.components.is_empty() {
            self.error(
                pos,
                path,
                "the SG has no components: `components` must define at least one",
            );
        }
        raw
    }

    fn su(&mut self, node: &Node, path: &str, pos: Pos) -> RawSu {
        let f = self.fields(node, path, "", SU_KEYS);
        let mut raw = RawSu {
            node: None,
            rank: defaults::SU_RANK,
            locked_instantiation: defaults::LOCKED_INSTANTIATION,
            vm: Vec::new(),
        };
        match f.get("node") {
            Some(n) => {
                raw.node = self
                    .name_of(n, path, "node")
                    .map(|value| Sp { value, pos: n.pos });
            }
            None => self.error(pos, path, "missing key `node` (the node the SU runs on)"),
        }
        if let Some(n) = f.get("rank") {
            raw.rank = self.count(n, path, "rank", 1).unwrap_or(raw.rank);
        }
        if let Some(n) = f.get("locked_instantiation") {
            raw.locked_instantiation = self
                .boolean(n, path, "locked_instantiation")
                .unwrap_or(raw.locked_instantiation);
        }
        if let Some(n) = f.get("vm") {
            // Component names are checked against the SG's components in `build`.
            for over in self.named(n, path, "vm", &|name| format!("{path}/{name}")) {
                let comp_path = format!("{path}/{}", over.name);
                let item = self.vm(over.node, &comp_path);
                raw.vm.push(Entry {
                    name: over.name,
                    pos: over.pos,
                    path: comp_path,
                    item,
                });
            }
        }
        raw
    }

    fn comp(&mut self, node: &Node, path: &str, pos: Pos) -> RawComp {
        let f = self.fields(node, path, "", COMP_KEYS);
        let mut raw = RawComp {
            kind: CompKind::Process,
            instantiate: Vec::new(),
            terminate: None,
            cleanup: None,
            monitor: None,
            timeouts: defaults::TIMEOUTS,
            healthcheck: None,
            recovery: defaults::RECOVERY,
            instantiation: defaults::INSTANTIATION,
            vm: None,
        };
        let kind = match f.get("kind") {
            Some(n) => self.choice(n, path, "kind", &KIND_NAMES),
            None => {
                let allowed: Vec<_> = KIND_NAMES.iter().map(|(name, _)| *name).collect();
                self.error(
                    pos,
                    path,
                    format!("missing key `kind` (one of {})", allowed.join(", ")),
                );
                None
            }
        };
        if let Some(kind) = kind {
            raw.kind = kind;
        }
        if kind == Some(CompKind::Vm) {
            // The agent runs QEMU itself: a command line here would be ignored, so it is refused.
            for (key, instead) in [
                ("instantiate", "the agent starts QEMU from the `vm` block"),
                ("terminate", "the agent powers the guest down through QEMU"),
                ("cleanup", "the agent kills QEMU"),
                ("monitor", "use `vm.health`"),
            ] {
                if let Some(n) = f.get(key) {
                    self.error(
                        n.pos,
                        path,
                        format!("`{key}` is not for vm components: {instead}"),
                    );
                }
            }
            match f.get("vm") {
                Some(n) => raw.vm = Some(self.vm(n, path)),
                None => self.error(
                    pos,
                    path,
                    "missing key `vm` (the guest QEMU runs: kernel, memory, forwards, health, ...)",
                ),
            }
        } else {
            match f.get("instantiate") {
                Some(n) => raw.instantiate = self.argv(n, path, "instantiate").unwrap_or_default(),
                None => self.error(
                    pos,
                    path,
                    "missing key `instantiate` (the command that starts the component, as a list)",
                ),
            }
            if let Some(n) = f.get("terminate") {
                raw.terminate = self.argv(n, path, "terminate");
            }
            if let Some(n) = f.get("cleanup") {
                raw.cleanup = self.argv(n, path, "cleanup");
            }
            if let Some(n) = f.get("monitor") {
                raw.monitor = self.argv(n, path, "monitor");
            }
            if let (Some(n), Some(kind)) = (f.get("vm"), kind) {
                self.error(
                    n.pos,
                    path,
                    format!(
                        "`vm` is only for vm components (this one is `{}`)",
                        kind_name(kind)
                    ),
                );
            }
        }
        if let Some(n) = f.get("timeouts") {
            raw.timeouts = self.timeouts(n, path);
        }
        if let Some(n) = f.get("healthcheck") {
            let hc = self.healthcheck(n, path);
            match kind {
                Some(CompKind::SaAware) => raw.healthcheck = hc,
                Some(other) => {
                    let instead = if other == CompKind::Vm {
                        "vm.health"
                    } else {
                        "monitor"
                    };
                    self.error(
                        n.pos,
                        path,
                        format!(
                            "`healthcheck` is only for sa-aware components (this one is `{}`); use `{instead}` instead",
                            kind_name(other)
                        ),
                    );
                }
                None => {}
            }
        }
        if let Some(n) = f.get("recovery") {
            raw.recovery = self
                .choice(n, path, "recovery", &recovery_names())
                .unwrap_or(raw.recovery);
        }
        if let Some(n) = f.get("instantiation") {
            raw.instantiation = self.instantiation(n, path);
        }
        raw
    }

    /// A `vm` block of a component or an SU override: every key optional (see [`RawVm`]).
    fn vm(&mut self, node: &Node, path: &str) -> RawVm {
        let f = self.fields(node, path, "vm", VM_KEYS);
        let mut raw = RawVm {
            pos: node.pos,
            ..RawVm::default()
        };
        let path_text = |d: &mut Self, key: &str| -> Option<Sp<String>> {
            let n = f.get(key)?;
            let key = qualify("vm", key);
            let value = match d.string(n, path, &key) {
                Some(v) if v.is_empty() => {
                    d.error(n.pos, path, format!("`{key}` is empty"));
                    String::new()
                }
                Some(v) if v.contains('\0') => {
                    d.error(n.pos, path, format!("`{key}` contains a NUL character"));
                    String::new()
                }
                Some(v) => v,
                None => String::new(),
            };
            Some(Sp { value, pos: n.pos })
        };
        raw.kernel = path_text(self, "kernel");
        raw.initrd = path_text(self, "initrd");
        if let Some(n) = f.get("memory") {
            raw.memory_mib = Some(self.memory(n, path).unwrap_or(defaults::VM_MEMORY_MIB));
        }
        if let Some(n) = f.get("cpus") {
            let cpus = match self.count(n, path, "vm.cpus", 1) {
                Some(c) if c > defaults::VM_MAX_CPUS => {
                    self.error(
                        n.pos,
                        path,
                        format!(
                            "`vm.cpus` is {c}; at most {} are supported",
                            defaults::VM_MAX_CPUS
                        ),
                    );
                    None
                }
                c => c,
            };
            raw.cpus = Some(cpus.unwrap_or(defaults::VM_CPUS));
        }
        if let Some(n) = f.get("accel") {
            raw.accel = Some(
                self.choice(n, path, "vm.accel", &ACCEL_NAMES)
                    .unwrap_or(defaults::VM_ACCEL),
            );
        }
        if let Some(n) = f.get("driver") {
            raw.driver = Some(
                self.choice(n, path, "vm.driver", &DRIVER_NAMES)
                    .unwrap_or(defaults::VM_DRIVER),
            );
        }
        if let Some(n) = f.get("forwards") {
            raw.forwards = Some(self.forwards(n, path));
        }
        if let Some(n) = f.get("health") {
            raw.health = Some(Sp {
                value: self.vm_health(n, path),
                pos: n.pos,
            });
        }
        if let Some(n) = f.get("cmdline_extra") {
            raw.cmdline_extra = Some(self.cmdline_words(n, path));
        }
        if let Some(n) = f.get("migrate") {
            raw.migrate = Some(Sp {
                value: self
                    .boolean(n, path, "vm.migrate")
                    .unwrap_or(defaults::VM_MIGRATE),
                pos: n.pos,
            });
        }
        raw
    }

    /// Guest memory: a number with `M`/`MiB` or `G`/`GiB` (binary units). A bare number is
    /// refused, as for durations: `512` could mean bytes, KiB or MiB.
    fn memory(&mut self, node: &Node, path: &str) -> Option<u32> {
        let result = match &node.value {
            Value::Str(s) => parse_memory(s),
            Value::Int(i) => Err(format!("`{i}` has no unit")),
            other => Err(format!("found {}", other.kind())),
        };
        let mib = match result {
            Ok(mib) => mib,
            Err(why) => {
                self.error(
                    node.pos,
                    path,
                    format!("`vm.memory`: {why}; expected a size like 256M or 1G (MiB, GiB)"),
                );
                return None;
            }
        };
        if mib < u64::from(defaults::VM_MIN_MEMORY_MIB) {
            self.error(
                node.pos,
                path,
                format!(
                    "`vm.memory` must be at least {}M, found {mib}M",
                    defaults::VM_MIN_MEMORY_MIB
                ),
            );
            return None;
        }
        match u32::try_from(mib) {
            Ok(m) => Some(m),
            Err(_) => {
                self.error(node.pos, path, format!("`vm.memory` is too large ({mib}M)"));
                None
            }
        }
    }

    /// A TCP port, 1-65535.
    fn port(&mut self, node: &Node, entity: &str, key: &str) -> Option<u16> {
        let n = self.count(node, entity, key, 1)?;
        match u16::try_from(n) {
            Ok(p) => Some(p),
            Err(_) => {
                self.error(
                    node.pos,
                    entity,
                    format!("`{key}` is not a TCP port ({n}; at most 65535)"),
                );
                None
            }
        }
    }

    fn forwards(&mut self, node: &Node, path: &str) -> Vec<Sp<VmForward>> {
        let items = match &node.value {
            Value::Seq(items) => items.as_slice(),
            Value::Null => &[],
            other => {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "`vm.forwards`: expected a list like [{{ host: 18080, guest: 80 }}], found {}",
                        other.kind()
                    ),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for item in items {
            let f = self.fields(item, path, "vm.forwards", FORWARD_KEYS);
            let port = |d: &mut Self, key: &str| match f.get(key) {
                Some(n) => d.port(n, path, &qualify("vm.forwards", key)),
                None => {
                    d.error(
                        item.pos,
                        path,
                        format!("`vm.forwards`: missing key `{key}`"),
                    );
                    None
                }
            };
            let host = port(self, "host");
            let guest = port(self, "guest");
            if let (Some(host), Some(guest)) = (host, guest) {
                out.push(Sp {
                    value: VmForward { host, guest },
                    pos: item.pos,
                });
            }
        }
        out
    }

    /// `{ http: ADDR:PORT/PATH, expect: TEXT } | { tcp: ADDR:PORT }`, with `period` and
    /// `timeout`. `None` when it is unusable (already reported).
    fn vm_health(&mut self, node: &Node, path: &str) -> Option<VmHealth> {
        let f = self.fields(node, path, "vm.health", VM_HEALTH_KEYS);
        let mut ok = true;
        let mut duration = |d: &mut Self, key: &str, default: Duration| match f.get(key) {
            Some(n) => d
                .positive_duration(n, path, &qualify("vm.health", key))
                .unwrap_or_else(|| {
                    ok = false;
                    default
                }),
            None => default,
        };
        let period = duration(self, "period", defaults::VM_HEALTH_PERIOD);
        let timeout = duration(self, "timeout", defaults::VM_HEALTH_TIMEOUT);
        let expect = match f.get("expect") {
            Some(n) => match self.text(n, path, "vm.health.expect") {
                Some(e) if e.is_empty() => {
                    self.error(n.pos, path, "`vm.health.expect` is empty");
                    None
                }
                Some(e) => Some((e, n.pos)),
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let probe = match (f.get("http"), f.get("tcp")) {
            (Some(n), None) => {
                let target = self.string(n, path, "vm.health.http");
                match target.map(|t| parse_http_target(&t)) {
                    Some(Ok((addr, request))) => Some(VmProbe::Http {
                        addr,
                        path: request,
                        expect: expect.map(|(e, _)| e),
                    }),
                    Some(Err(why)) => {
                        self.error(n.pos, path, format!("`vm.health.http`: {why}"));
                        None
                    }
                    None => None,
                }
            }
            (None, Some(n)) => {
                if let Some((_, pos)) = &expect {
                    self.error(
                        *pos,
                        path,
                        "`vm.health.expect` is only for http probes (a tcp probe reads no answer)",
                    );
                }
                let target = self.string(n, path, "vm.health.tcp");
                match target.map(|t| parse_socket_addr(&t)) {
                    Some(Ok(addr)) => Some(VmProbe::Tcp { addr }),
                    Some(Err(why)) => {
                        self.error(n.pos, path, format!("`vm.health.tcp`: {why}"));
                        None
                    }
                    None => None,
                }
            }
            (Some(_), Some(n)) => {
                self.error(
                    n.pos,
                    path,
                    "`vm.health`: give either `http` or `tcp`, not both",
                );
                None
            }
            (None, None) => {
                self.error(
                    node.pos,
                    path,
                    "`vm.health`: missing the probe, `http: \"127.0.0.1:PORT/PATH\"` or `tcp: \"127.0.0.1:PORT\"`",
                );
                None
            }
        };
        let probe = probe?;
        ok.then_some(VmHealth {
            probe,
            period,
            timeout,
        })
    }

    /// Kernel command line words: each one word, no whitespace or control characters (the
    /// line is joined with spaces, so a space would split a word in two).
    fn cmdline_words(&mut self, node: &Node, path: &str) -> Vec<String> {
        let Value::Seq(items) = &node.value else {
            if node.value != Value::Null {
                self.error(
                    node.pos,
                    path,
                    format!(
                        "`vm.cmdline_extra`: expected a list of words like [svcdebug=1], found {}",
                        node.value.kind()
                    ),
                );
            }
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            let Some(word) = self.text(item, path, "vm.cmdline_extra") else {
                continue;
            };
            if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.error(
                    item.pos,
                    path,
                    format!(
                        "`vm.cmdline_extra`: {word:?} must be one word (no spaces or control characters)"
                    ),
                );
                continue;
            }
            out.push(word);
        }
        out
    }

    fn timeouts(&mut self, node: &Node, path: &str) -> Timeouts {
        let f = self.fields(node, path, "timeouts", TIMEOUT_KEYS);
        let mut t = defaults::TIMEOUTS;
        for (key, slot) in [
            ("instantiate", &mut t.instantiate),
            ("terminate", &mut t.terminate),
            ("cleanup", &mut t.cleanup),
            ("callback", &mut t.callback),
        ] {
            if let Some(n) = f.get(key) {
                if let Some(d) = self.positive_duration(n, path, &qualify("timeouts", key)) {
                    *slot = d;
                }
            }
        }
        t
    }

    fn healthcheck(&mut self, node: &Node, path: &str) -> Option<Healthcheck> {
        let f = self.fields(node, path, "healthcheck", HEALTHCHECK_KEYS);
        let mut get = |key: &str| match f.get(key) {
            Some(n) => self.positive_duration(n, path, &qualify("healthcheck", key)),
            None => {
                self.error(
                    node.pos,
                    path,
                    format!("`healthcheck`: missing key `{key}`"),
                );
                None
            }
        };
        let period = get("period");
        let max_duration = get("max_duration");
        Some(Healthcheck {
            period: period?,
            max_duration: max_duration?,
        })
    }

    fn instantiation(&mut self, node: &Node, path: &str) -> InstantiationPolicy {
        let f = self.fields(node, path, "instantiation", INSTANTIATION_KEYS);
        let mut p = defaults::INSTANTIATION;
        if let Some(n) = f.get("retries") {
            p.retries = self
                .count(n, path, "instantiation.retries", 0)
                .unwrap_or(p.retries);
        }
        if let Some(n) = f.get("delayed_retries") {
            p.delayed_retries = self
                .count(n, path, "instantiation.delayed_retries", 0)
                .unwrap_or(p.delayed_retries);
        }
        if let Some(n) = f.get("retry_delay") {
            p.retry_delay = self
                .duration(n, path, "instantiation.retry_delay")
                .unwrap_or(p.retry_delay);
        }
        p
    }

    fn si(&mut self, node: &Node, path: &str, pos: Pos) -> RawSi {
        let f = self.fields(node, path, "", SI_KEYS);
        let mut raw = RawSi {
            sg: None,
            rank: defaults::SI_RANK,
            active: None,
            standbys: None,
            depends_on: Vec::new(),
            csis: Vec::new(),
        };
        match f.get("sg") {
            Some(n) => {
                raw.sg = self
                    .name_of(n, path, "sg")
                    .map(|value| Sp { value, pos: n.pos });
            }
            None => self.error(pos, path, "missing key `sg` (the SG that protects this SI)"),
        }
        if let Some(n) = f.get("rank") {
            raw.rank = self.count(n, path, "rank", 1).unwrap_or(raw.rank);
        }
        if let Some(n) = f.get("active") {
            raw.active = self.spanned_count(n, path, "active", 1);
        }
        if let Some(n) = f.get("standbys") {
            raw.standbys = self.spanned_count(n, path, "standbys", 0);
        }
        if let Some(n) = f.get("depends_on") {
            // Sponsor names are checked against the app's SIs in `build`; no name rules here
            // so that `other-app/si` gets the precise "another app" message there.
            if let Value::Map(entries) = &n.value {
                for (k, v) in entries {
                    let Some(name) = self.name_of(k, path, "depends_on") else {
                        continue;
                    };
                    let key = format!("depends_on.{name}");
                    let d = self.fields(v, path, &key, DEPENDENCY_KEYS);
                    let tolerance = match d.get("tolerance") {
                        Some(t) => self
                            .duration(t, path, &qualify(&key, "tolerance"))
                            .unwrap_or(defaults::DEPENDENCY_TOLERANCE),
                        None => defaults::DEPENDENCY_TOLERANCE,
                    };
                    raw.depends_on.push(Entry {
                        name,
                        pos: k.pos,
                        path: path.to_string(),
                        item: tolerance,
                    });
                }
            } else if n.value != Value::Null {
                self.error(
                    n.pos,
                    path,
                    format!(
                        "`depends_on`: expected a map of sponsor SI names, like {{ other-si: {{ tolerance: 2s }} }}, found {}",
                        n.value.kind()
                    ),
                );
            }
        }
        if let Some(n) = f.get("csis") {
            for csi in self.named(n, path, "csis", &|name| format!("{path}/{name}")) {
                let csi_path = format!("{path}/{}", csi.name);
                let item = self.csi(csi.node, &csi_path, csi.pos);
                raw.csis.push(Entry {
                    name: csi.name,
                    pos: csi.pos,
                    path: csi_path,
                    item,
                });
            }
        }
        if raw.csis.is_empty() {
            self.error(
                pos,
                path,
                "the SI has no CSIs: `csis` must define at least one",
            );
        }
        raw
    }

    fn csi(&mut self, node: &Node, path: &str, pos: Pos) -> RawCsi {
        let f = self.fields(node, path, "", CSI_KEYS);
        let mut raw = RawCsi {
            component: None,
            attrs: BTreeMap::new(),
        };
        match f.get("component") {
            Some(n) => {
                raw.component = self
                    .name_of(n, path, "component")
                    .map(|value| Sp { value, pos: n.pos });
            }
            None => self.error(
                pos,
                path,
                "missing key `component` (the component of the SG that serves this CSI)",
            ),
        }
        if let Some(n) = f.get("attrs") {
            match &n.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        let Some(key) = self.text(k, path, "attrs") else {
                            continue;
                        };
                        if let Some(value) = self.text(v, path, &format!("attrs.{key}")) {
                            raw.attrs.insert(key, value);
                        }
                    }
                }
                Value::Null => {}
                other => self.error(
                    n.pos,
                    path,
                    format!(
                        "`attrs`: expected a map of names to values, found {}",
                        other.kind()
                    ),
                ),
            }
        }
        raw
    }
}
