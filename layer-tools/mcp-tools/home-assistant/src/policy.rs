//! The allow-list: what a model may read and which services it may call on which entities.
//! Nothing is allowed that the file does not list.
//!
//! ```yaml
//! read:
//!   domains: [light, sensor]          # every entity of these domains
//!   entities: [switch.coffee_machine] # and these (`domain.*` patterns too)
//! call:
//!   - service: light.turn_on
//!     entities: [light.kitchen, light.hall]
//!     data: [brightness_pct, color_name]   # keys allowed in `data` (none when absent)
//!   - service: light.turn_off
//!     entities: ["light.*"]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;

/// `data` keys that would aim a call at other targets than `entity_id`.
const TARGET_KEYS: [&str; 5] = ["entity_id", "device_id", "area_id", "floor_id", "label_id"];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub read: ReadRules,
    #[serde(default)]
    pub call: Vec<CallRule>,
    /// Where the policy was read from (named in refusals).
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRules {
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub entities: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRule {
    /// `domain.service`.
    pub service: String,
    /// Entity ids or `domain.*` patterns.
    pub entities: Vec<String>,
    /// Keys allowed in `data`.
    #[serde(default)]
    pub data: Vec<String>,
}

/// An entity id, domain or service name as Home Assistant spells them (`[a-z0-9_]`), so
/// nothing else can reach the URL paths built from them.
pub fn valid_slug(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `domain.object_id`, both slugs.
pub fn valid_entity_id(id: &str) -> bool {
    id.split_once('.')
        .is_some_and(|(d, o)| valid_slug(d) && valid_slug(o))
}

fn matches(pattern: &str, entity_id: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(domain) => entity_id.split_once('.').is_some_and(|(d, _)| d == domain),
        None => pattern == entity_id,
    }
}

impl Policy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Policy {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut policy = Self::parse(&text).map_err(|message| Error::Policy {
            path: path.to_owned(),
            message,
        })?;
        policy.source = path.to_owned();
        Ok(policy)
    }

    /// Parses and checks a policy text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let policy: Policy = if text.trim().is_empty() {
            Policy::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?
        };
        for d in &policy.read.domains {
            if !valid_slug(d) {
                return Err(format!("read.domains: `{d}` is not a domain"));
            }
        }
        for e in &policy.read.entities {
            if !(valid_entity_id(e) || e.strip_suffix(".*").is_some_and(valid_slug)) {
                return Err(format!(
                    "read.entities: `{e}` is not an entity id or `domain.*`"
                ));
            }
        }
        for r in &policy.call {
            if !valid_entity_id(&r.service) {
                return Err(format!("call: `{}` is not `domain.service`", r.service));
            }
            if r.entities.is_empty() {
                return Err(format!(
                    "call: the rule for {} lists no entities",
                    r.service
                ));
            }
            for e in &r.entities {
                if !(valid_entity_id(e) || e.strip_suffix(".*").is_some_and(valid_slug)) {
                    return Err(format!(
                        "call: `{e}` (rule for {}) is not an entity id or `domain.*`",
                        r.service
                    ));
                }
            }
            if let Some(k) = r.data.iter().find(|k| TARGET_KEYS.contains(&k.as_str())) {
                return Err(format!(
                    "call: the rule for {} allows data key `{k}`, which would choose other targets; list entities instead",
                    r.service
                ));
            }
        }
        Ok(policy)
    }

    fn name(&self) -> String {
        if self.source.as_os_str().is_empty() {
            "the policy".into()
        } else {
            format!("the policy ({})", self.source.display())
        }
    }

    /// Whether a model may read this entity.
    pub fn can_read(&self, entity_id: &str) -> bool {
        let domain = entity_id.split_once('.').map_or("", |(d, _)| d);
        self.read.domains.iter().any(|d| d == domain)
            || self.read.entities.iter().any(|p| matches(p, entity_id))
    }

    /// Refuses reading `entity_id` unless allowed.
    pub fn check_read(&self, entity_id: &str) -> Result<(), Error> {
        if self.can_read(entity_id) {
            return Ok(());
        }
        Err(Error::Denied(format!(
            "reading {entity_id} is not allowed: {} lists neither its domain under `read.domains` nor the entity under `read.entities`",
            self.name()
        )))
    }

    /// Refuses listing a domain nothing of which is readable.
    pub fn check_list(&self, domain: &str) -> Result<(), Error> {
        let any = self.read.domains.iter().any(|d| d == domain)
            || self
                .read
                .entities
                .iter()
                .any(|p| p.split_once('.').is_some_and(|(d, _)| d == domain));
        if any {
            return Ok(());
        }
        Err(Error::Denied(format!(
            "listing domain {domain} is not allowed: {} allows reading nothing in it",
            self.name()
        )))
    }

    /// Refuses a service call unless a `call` rule allows this service on this entity with
    /// these data keys.
    pub fn check_call<'a>(
        &self,
        service: &str,
        entity_id: &str,
        data_keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Error> {
        let rules: Vec<&CallRule> = self.call.iter().filter(|r| r.service == service).collect();
        if rules.is_empty() {
            return Err(Error::Denied(format!(
                "calling {service} is not allowed: {} has no `call` rule for it",
                self.name()
            )));
        }
        let Some(rule) = rules
            .iter()
            .find(|r| r.entities.iter().any(|p| matches(p, entity_id)))
        else {
            let listed: Vec<&str> = rules
                .iter()
                .flat_map(|r| r.entities.iter().map(String::as_str))
                .collect();
            return Err(Error::Denied(format!(
                "calling {service} on {entity_id} is not allowed: the `call` rule for {service} in {} allows only {}",
                self.name(),
                listed.join(", ")
            )));
        };
        for key in data_keys {
            if TARGET_KEYS.contains(&key) {
                return Err(Error::Denied(format!(
                    "data key `{key}` is not allowed: the target is given by entity_id alone"
                )));
            }
            if !rule.data.iter().any(|k| k == key) {
                let allowed = if rule.data.is_empty() {
                    "none".to_owned()
                } else {
                    rule.data.join(", ")
                };
                return Err(Error::Denied(format!(
                    "data key `{key}` is not allowed for {service}: the rule in {} allows {allowed}",
                    self.name()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
read:
  domains: [light]
  entities: [switch.coffee, "sensor.*"]
call:
  - service: light.turn_on
    entities: [light.kitchen]
    data: [brightness_pct]
  - service: light.turn_off
    entities: ["light.*"]
"#;

    #[test]
    fn deny_by_default() {
        let p = Policy::parse("").unwrap();
        assert!(p.check_read("light.kitchen").is_err());
        assert!(p.check_call("light.turn_on", "light.kitchen", []).is_err());
    }

    #[test]
    fn rules() {
        let p = Policy::parse(POLICY).unwrap();
        assert!(p.can_read("light.hall"));
        assert!(p.can_read("switch.coffee"));
        assert!(p.can_read("sensor.temp"));
        assert!(!p.can_read("switch.heater"));
        assert!(!p.can_read("lock.front_door"));
        assert!(p.check_list("switch").is_ok());
        assert!(p.check_list("lock").is_err());
        assert!(
            p.check_call("light.turn_on", "light.kitchen", ["brightness_pct"])
                .is_ok()
        );
        let e = p
            .check_call("light.turn_on", "light.hall", [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("allows only light.kitchen"), "{e}");
        let e = p
            .check_call("light.turn_on", "light.kitchen", ["color_name"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`color_name`"), "{e}");
        let e = p
            .check_call("light.turn_on", "light.kitchen", ["entity_id"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("entity_id alone"), "{e}");
        assert!(p.check_call("light.turn_off", "light.hall", []).is_ok());
        assert!(p.check_call("lock.unlock", "lock.front_door", []).is_err());
    }

    #[test]
    fn bad_files_are_refused() {
        for bad in [
            "read: {domains: [Light]}",
            "call: [{service: turn_on, entities: [light.a]}]",
            "call: [{service: light.turn_on, entities: []}]",
            "call: [{service: light.turn_on, entities: [light.a], data: [area_id]}]",
            "reed: {}",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slugs() {
        assert!(valid_entity_id("light.kitchen_2"));
        for bad in [
            "light",
            "light.",
            ".x",
            "light.../x",
            "light.a/b",
            "Light.a",
            "light.a?b",
        ] {
            assert!(!valid_entity_id(bad), "{bad}");
        }
    }
}
