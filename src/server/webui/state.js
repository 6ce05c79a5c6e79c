// What the UI modules share: the workspaces, the open workspace's conversations, the open
// conversation, the models the server has, and the generation in flight.
export const state = {
  workspaces: [],  // all workspaces, oldest first
  ws: null,        // the open workspace
  convs: [],       // its conversations (the same array as cache.get(ws.id))
  conv: null,      // the open conversation, or null for a new chat not sent yet
  draftModel: "",  // model picked for a new chat before its first message
  models: [],      // model names from /api/tags
  job: null,       // the generation in flight: {controller, conv, msg}
};

// Conversations per workspace id, loaded from IndexedDB once: switching workspaces is instant.
export const cache = new Map();

// The workspace's sampling settings as Ollama options (unset ones are left to the server).
export function requestOptions(ws) {
  const o = {};
  for (const [k, v] of Object.entries(ws.options || {})) {
    if (v !== null && v !== undefined && v !== "" && Number.isFinite(Number(v))) o[k] = Number(v);
  }
  return o;
}

// The model a request in conv uses: the conversation's, else the workspace default, else the first.
export function modelFor(conv) {
  const want = (conv && conv.model) || state.draftModel || (state.ws && state.ws.model) || "";
  if (want && (state.models.includes(want) || !state.models.length)) return want;
  return state.models[0] || want;
}
