//! What Open WebUI (0.12) sends beside a request when `ENABLE_FORWARD_USER_INFO_HEADERS=True`:
//! the user it is acting for and the chat. The name is percent-encoded (Python's
//! `quote(name, safe=" ")`); with `FORWARD_USER_INFO_HEADER_JWT_SECRET` set, Open WebUI sends
//! a signed token ([`USER_JWT`]) instead of these.

pub const USER_ID: &str = "x-openwebui-user-id";
pub const USER_NAME: &str = "x-openwebui-user-name";
pub const USER_EMAIL: &str = "x-openwebui-user-email";
pub const USER_ROLE: &str = "x-openwebui-user-role";
pub const CHAT_ID: &str = "x-openwebui-chat-id";
pub const USER_JWT: &str = "x-openwebui-user-jwt";
