/**
 * The text/event-stream format, read as the HTML standard's "event stream interpretation"
 * says (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
 * lines end with CRLF, LF or CR (a CRLF may be split across chunks); `:` starts a comment;
 * `data` lines join with LF; `id` persists until changed and is ignored if it holds NUL;
 * `retry` counts only when all ASCII digits; a blank line dispatches; an event cut off by the
 * end of the stream is dropped. Tests check it against eventsource-parser on the same input.
 */

/** One dispatched event. */
export interface StreamEvent {
  /** The event type: the `event` field, or `message`. */
  readonly type: string;
  readonly data: string;
  /** The last event id when it was dispatched (the stream's, persisting across events). */
  readonly lastEventId: string;
}

// A line past this is no event this client reads: a broken or hostile server.
const MAX_LINE = 1 << 20;

export class EventStreamParser {
  /** The last event id, as set by the last dispatch (what `Last-Event-ID` sends). */
  lastEventId = "";
  /** The server's `retry` in milliseconds, when it sent one. */
  retry: number | undefined;
  #pending = "";
  #afterCR = false; // the last chunk ended in CR: a leading LF of the next one belongs to it
  #started = false;
  #data: string[] = [];
  #type = "";
  #idBuffer = "";

  /** Read a chunk of decoded text; the events it completed, in order. */
  feed(chunk: string): StreamEvent[] {
    if (!this.#started && chunk.length > 0) {
      this.#started = true;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
    }
    if (this.#afterCR && chunk.startsWith("\n")) chunk = chunk.slice(1);
    if (chunk.length > 0) this.#afterCR = false;
    const events: StreamEvent[] = [];
    let text = this.#pending + chunk;
    let start = 0;
    for (;;) {
      const cr = text.indexOf("\r", start);
      const lf = text.indexOf("\n", start);
      const end = cr === -1 ? lf : lf === -1 ? cr : Math.min(cr, lf);
      if (end === -1) break;
      this.#line(text.slice(start, end), events);
      if (text.charCodeAt(end) === 13) {
        if (end + 1 === text.length) {
          this.#afterCR = true;
          start = end + 1;
          break;
        }
        start = text.charCodeAt(end + 1) === 10 ? end + 2 : end + 1;
      } else {
        start = end + 1;
      }
    }
    this.#pending = text.slice(start);
    if (this.#pending.length > MAX_LINE) throw new RangeError("event stream line too long");
    text = "";
    return events;
  }

  #line(line: string, events: StreamEvent[]): void {
    if (line === "") {
      this.#dispatch(events);
      return;
    }
    if (line.startsWith(":")) return; // a comment: the keep-alive
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "event":
        this.#type = value;
        break;
      case "data":
        this.#data.push(value);
        break;
      case "id":
        if (!value.includes("\0")) this.#idBuffer = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
      default: // unknown fields are ignored
    }
  }

  #dispatch(events: StreamEvent[]): void {
    this.lastEventId = this.#idBuffer;
    const data = this.#data;
    const type = this.#type;
    this.#data = [];
    this.#type = "";
    if (data.length === 0) return;
    events.push({ type: type || "message", data: data.join("\n"), lastEventId: this.lastEventId });
  }
}
