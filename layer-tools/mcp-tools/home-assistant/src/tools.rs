//! The MCP face: `ha_list_entities`, `ha_get_state`, `ha_call_service`, each checked against
//! the policy before Home Assistant is asked anything.

use std::fmt::Write as _;
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::client::HaClient;
use crate::error::Error;
use crate::policy::{Policy, valid_entity_id, valid_slug};

/// What every session shares.
#[derive(Debug)]
pub struct Shared {
    pub client: HaClient,
    pub policy: Policy,
    /// Entities listed at most per answer.
    pub max_entities: usize,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ListParams {
    /// Only entities of this domain (`light`, `sensor`, ...).
    #[serde(default)]
    pub domain: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct GetParams {
    /// The entity, as `domain.object_id` (`light.kitchen`).
    pub entity_id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CallParams {
    /// The service's domain (`light`).
    pub domain: String,
    /// The service (`turn_on`).
    pub service: String,
    /// The entity to act on (`light.kitchen`).
    pub entity_id: String,
    /// Service data (`{"brightness_pct": 40}`); only keys the policy allows.
    #[serde(default)]
    pub data: Option<Map<String, Value>>,
}

#[derive(Clone)]
pub struct HomeAssistant {
    shared: Arc<Shared>,
    tool_router: ToolRouter<Self>,
}

impl HomeAssistant {
    pub fn new(shared: Arc<Shared>) -> Self {
        HomeAssistant {
            shared,
            tool_router: Self::tool_router(),
        }
    }

    async fn list(&self, p: ListParams) -> Result<String, Error> {
        let domain = p
            .domain
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty());
        if let Some(d) = &domain {
            if !valid_slug(d) {
                return Err(Error::BadArgument(format!("`{d}` is not a domain")));
            }
            self.shared.policy.check_list(d)?;
        }
        let mut states: Vec<_> = self
            .shared
            .client
            .states()
            .await?
            .into_iter()
            .filter(|s| self.shared.policy.can_read(&s.entity_id))
            .filter(|s| {
                domain
                    .as_deref()
                    .is_none_or(|d| s.entity_id.split_once('.').is_some_and(|(sd, _)| sd == d))
            })
            .collect();
        states.sort_by(|a, b| a.entity_id.cmp(&b.entity_id));
        if states.is_empty() {
            return Ok("No readable entities.".into());
        }
        let total = states.len();
        let mut out = format!("{total} entities:\n");
        for s in states.iter().take(self.shared.max_entities) {
            let _ = write!(out, "{}: {}", s.entity_id, s.state);
            if let Some(n) = s.friendly_name() {
                let _ = write!(out, " ({n})");
            }
            out.push('\n');
        }
        if total > self.shared.max_entities {
            let _ = writeln!(
                out,
                "... and {} more; ask for one domain to see them",
                total - self.shared.max_entities
            );
        }
        Ok(out)
    }

    async fn get(&self, p: GetParams) -> Result<String, Error> {
        let id = p.entity_id.trim();
        if !valid_entity_id(id) {
            return Err(Error::BadArgument(format!(
                "`{id}` is not an entity id (domain.object_id, lower case)"
            )));
        }
        self.shared.policy.check_read(id)?;
        let state = self.shared.client.state(id).await?;
        serde_json::to_string_pretty(&state).map_err(|e| Error::BadArgument(e.to_string()))
    }

    async fn call(&self, p: CallParams) -> Result<String, Error> {
        let (domain, service, id) = (p.domain.trim(), p.service.trim(), p.entity_id.trim());
        if !valid_slug(domain) || !valid_slug(service) {
            return Err(Error::BadArgument(format!(
                "`{domain}.{service}` is not a service (lower-case domain and service names)"
            )));
        }
        if !valid_entity_id(id) {
            return Err(Error::BadArgument(format!(
                "`{id}` is not an entity id (domain.object_id, lower case)"
            )));
        }
        let full = format!("{domain}.{service}");
        let data = p.data.unwrap_or_default();
        let shown = Value::Object(data.clone()).to_string();
        if let Err(e) = self
            .shared
            .policy
            .check_call(&full, id, data.keys().map(String::as_str))
        {
            tracing::warn!(target: "audit", service = %full, entity_id = %id, data = %shown, reason = %e, "service call refused");
            return Err(e);
        }
        let result = self.shared.client.call(domain, service, id, data).await;
        match &result {
            Ok(changed) => {
                tracing::info!(target: "audit", service = %full, entity_id = %id, data = %shown, changed = changed.len(), "service called")
            }
            Err(e) => {
                tracing::warn!(target: "audit", service = %full, entity_id = %id, data = %shown, error = %e, "service call failed")
            }
        }
        let changed = result?;
        let mut out = format!("Called {full} on {id}.");
        let visible: Vec<_> = changed
            .iter()
            .filter(|s| self.shared.policy.can_read(&s.entity_id))
            .collect();
        if !visible.is_empty() {
            out.push_str(" Changed states:");
            for s in visible {
                let _ = write!(out, "\n{}: {}", s.entity_id, s.state);
            }
        }
        Ok(out)
    }
}

fn answer(r: Result<String, Error>) -> Result<CallToolResult, ErrorData> {
    Ok(match r {
        Ok(text) => mcp_kit::tool_text(text),
        Err(e) => mcp_kit::tool_error(e.to_string()),
    })
}

#[tool_router]
impl HomeAssistant {
    /// Lists entities.
    #[tool(
        description = "Lists the Home Assistant entities this server may read, with their state and name; optionally of one domain.",
        annotations(title = "List Home Assistant entities", read_only_hint = true)
    )]
    async fn ha_list_entities(
        &self,
        Parameters(p): Parameters<ListParams>,
    ) -> Result<CallToolResult, ErrorData> {
        answer(self.list(p).await)
    }

    /// One entity's state.
    #[tool(
        description = "Returns one Home Assistant entity's state and attributes.",
        annotations(title = "Get a Home Assistant state", read_only_hint = true)
    )]
    async fn ha_get_state(
        &self,
        Parameters(p): Parameters<GetParams>,
    ) -> Result<CallToolResult, ErrorData> {
        answer(self.get(p).await)
    }

    /// Calls a service.
    #[tool(
        description = "Calls a Home Assistant service on one entity (e.g. domain light, service turn_on, entity_id light.kitchen, data {\"brightness_pct\": 40}). Only services and entities the operator allowed can be used; anything else is refused with the rule that refused it.",
        annotations(
            title = "Call a Home Assistant service",
            read_only_hint = false,
            destructive_hint = false
        )
    )]
    async fn ha_call_service(
        &self,
        Parameters(p): Parameters<CallParams>,
    ) -> Result<CallToolResult, ErrorData> {
        answer(self.call(p).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for HomeAssistant {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "home-assistant",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Read and control Home Assistant within the operator's allow-list. List entities first; refused calls say which rule refused them.",
            )
    }
}
