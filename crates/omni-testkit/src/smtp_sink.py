# The SMTP server behind omni-testkit's SmtpSink: aiosmtpd, storing every
# accepted message byte for byte with its envelope.
#
# usage: smtp_sink.py OUT_DIR PORT_FILE CERT KEY LOGIN PASSWORD
#
# Each message N becomes OUT_DIR/N.meta (envelope, one "key value" per line)
# and OUT_DIR/N.eml (the DATA as received, dot-unstuffed, CRLF kept). The
# .eml is renamed into place last, so a reader that sees it sees both. The
# port, chosen by the kernel, is written to PORT_FILE once listening.

import asyncio
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

out_dir, port_file, cert, key, login, password = sys.argv[1:7]


def write_atomically(path, data):
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.rename(path + ".tmp", path)


class Store:
    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(out_dir, "%08d" % self.count)
        mail_from = envelope.mail_from or ""
        meta = ["mail_from " + ("" if mail_from == "<>" else mail_from)]
        meta += ["rcpt_to " + rcpt for rcpt in envelope.rcpt_tos]
        if session.authenticated:
            meta.append("auth " + str(session.auth_data))
        meta.append("tls " + ("yes" if session.ssl is not None else "no"))
        write_atomically(base + ".meta", ("\n".join(meta) + "\n").encode("utf-8"))
        write_atomically(base + ".eml", envelope.original_content)
        return "250 2.0.0 OK stored as %d" % self.count


def authenticate(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == login.encode()
        and auth_data.password == password.encode()
    )
    if ok:
        return AuthResult(success=True, auth_data=login)
    # handled=False: aiosmtpd itself answers 535 and keeps the session.
    return AuthResult(success=False, handled=False)


async def main():
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    store = Store()

    def protocol():
        return SMTP(
            store,
            hostname="localhost",
            enable_SMTPUTF8=True,
            tls_context=tls,
            authenticator=authenticate,
            auth_require_tls=False,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    write_atomically(port_file, str(port).encode())
    await server.serve_forever()


asyncio.run(main())
