#!/usr/bin/env python3
"""A real SMTP server for tests, with a small HTTP API to inspect and steer it.

    python3 scripts/smtp-sink.py [--smtp-port 0] [--http-port 0] [--host 127.0.0.1]

When both servers listen it prints one JSON line to stdout, {"smtp_port": N, "http_port": M}
(port 0 means "any free port": the line tells which), then serves until SIGTERM or SIGINT.

Control API (JSON in and out):
  GET  /messages  every message accepted so far: message_id, mail_from, rcpt_tos, subject,
                  text, html, received_at (Unix time)
  GET  /stats     {"accepted", "refused", "connections", "data_started"}; data_started counts
                  DATA commands the server answered with 354, whether or not the data then came
  POST /mode      {"refuse": 451 | 550 | null, "times": n | null, "delay_ms": n}
                  refuse: answer the end of DATA (after the final ".") with this code, so the
                  client has already sent the whole message; times: only for the next n
                  messages, then accept again (omitted or null: until told otherwise);
                  delay_ms: wait this long before answering the end of DATA. Keys left out keep
                  their current value.
  POST /reset     forget messages and statistics, and accept everything without delay again.

Needs aiosmtpd (python3 -m pip install aiosmtpd; pinned in scripts/requirements-test.txt).
"""

import argparse
import asyncio
import email
import email.header
import json
import logging
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from aiosmtpd.smtp import SMTP
except ImportError:
    print(
        "smtp-sink: aiosmtpd is missing; install it with: python3 -m pip install aiosmtpd",
        file=sys.stderr,
    )
    sys.exit(3)

REFUSAL_TEXT = {
    421: "421 4.3.2 Service shutting down (smtp-sink)",
    450: "450 4.2.0 Mailbox unavailable (smtp-sink)",
    451: "451 4.3.0 Try again later (smtp-sink)",
    452: "452 4.3.1 Insufficient system storage (smtp-sink)",
    550: "550 5.7.1 Message rejected (smtp-sink)",
    552: "552 5.3.4 Message too big (smtp-sink)",
    554: "554 5.6.0 Transaction failed (smtp-sink)",
}


class Sink:
    """Everything the SMTP side records and the HTTP side reads, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.messages = []
            self.accepted = 0
            self.refused = 0
            self.connections = 0
            self.data_started = 0
            self.refuse = None
            self.refuse_times = None
            self.delay_ms = 0

    def set_mode(self, mode):
        with self.lock:
            if "refuse" in mode:
                code = mode["refuse"]
                if code is not None and not (isinstance(code, int) and 400 <= code <= 599):
                    raise ValueError("refuse must be null or a 4xx/5xx code")
                self.refuse = code
                times = mode.get("times")
                if times is not None and not (isinstance(times, int) and times >= 0):
                    raise ValueError("times must be null or a non-negative integer")
                self.refuse_times = times
                if times == 0:
                    self.refuse, self.refuse_times = None, None
            if "delay_ms" in mode:
                delay = mode["delay_ms"] or 0
                if not (isinstance(delay, (int, float)) and delay >= 0):
                    raise ValueError("delay_ms must be a non-negative number")
                self.delay_ms = delay
            return self.mode()

    def mode(self):
        return {"refuse": self.refuse, "times": self.refuse_times, "delay_ms": self.delay_ms}

    def stats(self):
        with self.lock:
            return {
                "accepted": self.accepted,
                "refused": self.refused,
                "connections": self.connections,
                "data_started": self.data_started,
            }

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def count_connection(self):
        with self.lock:
            self.connections += 1

    def count_data_started(self):
        with self.lock:
            self.data_started += 1

    def delay_seconds(self):
        with self.lock:
            return self.delay_ms / 1000.0

    def decide(self):
        """The reply to the end of DATA for the next message: a refusal line, or None."""
        with self.lock:
            if self.refuse is None:
                return None
            code = self.refuse
            if self.refuse_times is not None:
                self.refuse_times -= 1
                if self.refuse_times <= 0:
                    self.refuse, self.refuse_times = None, None
            self.refused += 1
            return REFUSAL_TEXT.get(code, f"{code} Refused (smtp-sink)")

    def accept(self, message):
        with self.lock:
            self.accepted += 1
            self.messages.append(message)
            return self.accepted


class Handler:
    """aiosmtpd handler: answers the end of DATA as the current mode says."""

    def __init__(self, sink):
        self.sink = sink

    async def handle_DATA(self, server, session, envelope):
        delay = self.sink.delay_seconds()
        if delay:
            await asyncio.sleep(delay)
        refusal = self.sink.decide()
        if refusal is not None:
            return refusal
        number = self.sink.accept(parse(envelope))
        return f"250 2.0.0 OK queued as {number}"


def parse(envelope):
    # compat32 parsing plus explicit decoding is an order of magnitude faster than the
    # email.policy.default parser, and the sink must keep up with thousands of messages.
    message = email.message_from_bytes(envelope.original_content or envelope.content)
    text = html = None
    for part in message.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain" and text is None:
            text = body_text(part)
        elif content_type == "text/html" and html is None:
            html = body_text(part)
    return {
        "message_id": header_text(message, "Message-ID").strip(),
        "mail_from": envelope.mail_from,
        "rcpt_tos": list(envelope.rcpt_tos),
        "subject": header_text(message, "Subject"),
        "from": header_text(message, "From"),
        "to": header_text(message, "To"),
        "text": text,
        "html": html,
        "received_at": time.time(),
    }


def header_text(message, name):
    value = message.get(name)
    if value is None:
        return ""
    return str(email.header.make_header(email.header.decode_header(value)))


def body_text(part):
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = payload.decode(charset, errors="replace")
    except LookupError:
        text = payload.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n")


def smtp_server_class(sink):
    class SinkSMTP(SMTP):
        def connection_made(self, transport):
            sink.count_connection()
            super().connection_made(transport)

        async def smtp_DATA(self, arg):
            # Counted when the DATA command will be answered with 354, before any data arrives,
            # so a test can see that a client reached the data phase and then went away.
            if self.session is not None and self.envelope is not None and \
                    self.envelope.rcpt_tos and not arg:
                sink.count_data_started()
            await super().smtp_DATA(arg)

    return SinkSMTP


def control_handler(sink):
    class ControlHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
            pass

        def reply(self, status, body):
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def read_json(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            return json.loads(raw) if raw.strip() else {}

        def do_GET(self):
            if self.path == "/messages":
                self.reply(200, sink.snapshot())
            elif self.path == "/stats":
                self.reply(200, sink.stats())
            elif self.path == "/mode":
                with sink.lock:
                    self.reply(200, sink.mode())
            else:
                self.reply(404, {"error": f"no such resource: {self.path}"})

        def do_POST(self):
            try:
                body = self.read_json()
            except ValueError as error:
                self.reply(400, {"error": f"invalid JSON: {error}"})
                return
            if self.path == "/mode":
                if not isinstance(body, dict):
                    self.reply(400, {"error": "expected a JSON object"})
                    return
                try:
                    self.reply(200, sink.set_mode(body))
                except ValueError as error:
                    self.reply(400, {"error": str(error)})
            elif self.path == "/reset":
                sink.reset()
                self.reply(200, sink.stats())
            else:
                self.reply(404, {"error": f"no such resource: {self.path}"})

    return ControlHandler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    args = parser.parse_args()

    # aiosmtpd logs every connection; tests open thousands.
    logging.getLogger("mail.log").setLevel(logging.ERROR)

    sink = Sink()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server_class = smtp_server_class(sink)
    handler = Handler(sink)
    smtp_server = loop.run_until_complete(loop.create_server(
        lambda: server_class(handler, hostname="smtp-sink", enable_SMTPUTF8=True,
                             ident="smtp-sink"),
        host=args.host, port=args.smtp_port))
    smtp_port = smtp_server.sockets[0].getsockname()[1]

    http_server = ThreadingHTTPServer((args.host, args.http_port), control_handler(sink))
    http_server.daemon_threads = True
    threading.Thread(target=http_server.serve_forever, daemon=True).start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, loop.stop)

    print(json.dumps({"smtp_port": smtp_port, "http_port": http_server.server_address[1]}),
          flush=True)
    try:
        loop.run_forever()
    finally:
        http_server.shutdown()
        smtp_server.close()
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
