// Server-sent events over fetch: EventSource cannot send the API key's header, so the
// stream is read here and split into events (the text/event-stream format). Resumes
// with Last-Event-ID after a dropped connection; returns when the server ends it.
import { authHeaders, checked } from "./api.js";

function parse(block) {
  const event = { event: "message", data: "", id: null };
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") event.id = value;
  }
  event.data = data.join("\n");
  return event;
}

export async function followEvents(url, onEvent, signal) {
  let lastId = null;
  for (;;) {
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      const response = await checked(await fetch(url, { headers, signal }));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
          const event = parse(block);
          if (event.id !== null) lastId = event.id;
          if (!event.data && event.event === "message") continue;
          if (onEvent(event.event, event.data ? JSON.parse(event.data) : null) === "stop") {
            return;
          }
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error.status && error.status < 500) throw error; // 401, 404: not transient
    }
    if (signal.aborted) return;
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}
