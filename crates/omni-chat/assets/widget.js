/*
 * Omnid web chat widget, served by the daemon at /channels/<id>/widget.js.
 *
 * One script tag embeds it. It speaks the protocol of
 * docs/channels/webchat.md over /channels/<id>/socket. Everything is built
 * with createElement and class names (styles live in widget.css), with no
 * eval and no inline handlers, so it runs under a strict
 * Content-Security-Policy.
 */
(function () {
  'use strict';

  if (window.OmnidChatWidget) return; // embedded twice: the first one wins

  // `currentScript` is set for deferred classic scripts too; the fallback
  // covers pages that inject the tag in ways that leave it null.
  const script = document.currentScript ||
    Array.from(document.querySelectorAll('script[src]'))
      .find((s) => /\/widget\.js(?:[?#]|$)/.test(s.src));
  if (!script || !script.src) return;

  // ---- Where we live: /channels/<id>/ --------------------------------------
  const base = new URL('./', script.src);
  const segments = base.pathname.split('/').filter(Boolean);
  const at = segments.lastIndexOf('channels');
  const channel = decodeURIComponent(
    (at >= 0 && segments[at + 1]) || segments[segments.length - 1] || 'default');
  const socketUrl = new URL('socket', base).href.replace(/^http/, 'ws');

  // ---- Configuration: data-* on the script tag, then window.OmnidChat -------
  const data = script.dataset;
  const global = window.OmnidChat && typeof window.OmnidChat === 'object' ? window.OmnidChat : {};

  function pickLocale() {
    const candidates = [];
    if (data.localeFromQuery) {
      try { candidates.push(new URLSearchParams(location.search).get(data.localeFromQuery)); } catch (_) { /* no query */ }
    }
    candidates.push(data.locale, global.locale, document.documentElement.lang, navigator.language);
    // A BCP 47 tag only: the query parameter is whatever the URL says.
    return candidates.find((c) => typeof c === 'string' && /^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$/.test(c)) || 'en';
  }

  function pickIdentity() {
    const src = global.identity && typeof global.identity === 'object' ? global.identity
      : { kind: data.identityKind, value: data.identityValue, name: data.identityName, hash: data.identityHash };
    if (typeof src.kind !== 'string' || typeof src.value !== 'string' || !src.kind || !src.value) return null;
    const identity = {};
    for (const k of ['kind', 'value', 'name', 'hash']) {
      if (typeof src[k] === 'string' && src[k]) identity[k] = src[k];
    }
    return identity;
  }

  const locale = pickLocale().replace('_', '-');
  const lang = locale.split('-')[0].toLowerCase();
  const dir = ['fa', 'ar', 'he', 'ur'].includes(lang) ? 'rtl' : 'ltr';
  const identity = pickIdentity();
  const openAtLoad = ['true', '1', ''].includes(data.open);
  const maxLength = Math.max(1, parseInt(data.maxLength, 10) || 4000);
  // What the channel's /uploads takes (it checks the bytes too), and how
  // many files one message may carry.
  const ACCEPT = 'image/png,image/jpeg,image/gif,image/webp,application/pdf';
  const MAX_FILES = 5;

  // ---- Strings ---------------------------------------------------------------
  // Non-ASCII is written as \u escapes: a script without a charset is decoded
  // with the host page's encoding (windows-1256, GBK...), which would garble it.
  const STRINGS = {
    en: {
      title: 'Chat with us', placeholder: 'Write a message\u2026', send: 'Send', open: 'Open chat',
      close: 'Close chat', connecting: 'Connecting\u2026', online: 'Online', reconnecting: 'Reconnecting\u2026',
      idle: 'Chat', offline: 'Chat is unavailable right now.', sent: 'Sent', delivered: 'Delivered',
      failed: 'Not sent', you: 'You', agent: 'Support', refused: 'We could not verify who you are. Please sign in again.',
      origin: 'Chat is not enabled on this site.', tooBig: 'That message is too long to send.',
      attach: 'Attach a file', attachments: 'Files to send', remove: 'Remove',
      uploading: 'Uploading\u2026', waitUploads: 'Wait until the files are uploaded.', tooManyFiles: 'At most 5 files per message.',
      fileTooBig: 'That file is too large.', fileType: 'Only images (PNG, JPEG, GIF, WebP) and PDF files can be sent.', uploadFailed: 'The file could not be uploaded. Please try again.',
      contactPrompt: 'Leave your email and we\u2019ll reply there if you\u2019re away', save: 'Save', contactSaved: 'We\u2019ll email {email} if you\u2019re away',
      change: 'change', badEmail: 'That doesn\u2019t look like an email address.',
    },
    fa: {
      title: '\u06af\u0641\u062a\u06af\u0648 \u0628\u0627 \u0645\u0627', placeholder: '\u067e\u06cc\u0627\u0645\u06cc \u0628\u0646\u0648\u06cc\u0633\u06cc\u062f\u2026', send: '\u0627\u0631\u0633\u0627\u0644', open: '\u0628\u0627\u0632 \u06a9\u0631\u062f\u0646 \u06af\u0641\u062a\u06af\u0648',
      close: '\u0628\u0633\u062a\u0646 \u06af\u0641\u062a\u06af\u0648', connecting: '\u062f\u0631 \u062d\u0627\u0644 \u0627\u062a\u0635\u0627\u0644\u2026', online: '\u0628\u0631\u062e\u0637', reconnecting: '\u0627\u062a\u0635\u0627\u0644 \u062f\u0648\u0628\u0627\u0631\u0647\u2026',
      idle: '\u06af\u0641\u062a\u06af\u0648', offline: '\u06af\u0641\u062a\u06af\u0648 \u0627\u06a9\u0646\u0648\u0646 \u062f\u0631 \u062f\u0633\u062a\u0631\u0633 \u0646\u06cc\u0633\u062a.', sent: '\u0641\u0631\u0633\u062a\u0627\u062f\u0647 \u0634\u062f', delivered: '\u062a\u062d\u0648\u06cc\u0644 \u0634\u062f',
      failed: '\u0641\u0631\u0633\u062a\u0627\u062f\u0647 \u0646\u0634\u062f', you: '\u0634\u0645\u0627', agent: '\u067e\u0634\u062a\u06cc\u0628\u0627\u0646\u06cc', refused: '\u0647\u0648\u06cc\u062a \u0634\u0645\u0627 \u062a\u0623\u06cc\u06cc\u062f \u0646\u0634\u062f. \u0644\u0637\u0641\u0627\u064b \u062f\u0648\u0628\u0627\u0631\u0647 \u0648\u0627\u0631\u062f \u0634\u0648\u06cc\u062f.',
      origin: '\u06af\u0641\u062a\u06af\u0648 \u0631\u0648\u06cc \u0627\u06cc\u0646 \u0633\u0627\u06cc\u062a \u0641\u0639\u0627\u0644 \u0646\u06cc\u0633\u062a.', tooBig: '\u0627\u06cc\u0646 \u067e\u06cc\u0627\u0645 \u0628\u0631\u0627\u06cc \u0641\u0631\u0633\u062a\u0627\u062f\u0646 \u0628\u06cc\u0634 \u0627\u0632 \u062d\u062f \u0637\u0648\u0644\u0627\u0646\u06cc \u0627\u0633\u062a.',
      attach: '\u067e\u06cc\u0648\u0633\u062a \u0641\u0627\u06cc\u0644', attachments: '\u0641\u0627\u06cc\u0644\u200c\u0647\u0627\u06cc \u067e\u06cc\u0648\u0633\u062a', remove: '\u062d\u0630\u0641',
      uploading: '\u062f\u0631 \u062d\u0627\u0644 \u0628\u0627\u0631\u06af\u0630\u0627\u0631\u06cc\u2026', waitUploads: '\u0644\u0637\u0641\u0627\u064b \u062a\u0627 \u067e\u0627\u06cc\u0627\u0646 \u0628\u0627\u0631\u06af\u0630\u0627\u0631\u06cc \u0641\u0627\u06cc\u0644\u200c\u0647\u0627 \u0635\u0628\u0631 \u06a9\u0646\u06cc\u062f.', tooManyFiles: '\u062d\u062f\u0627\u06a9\u062b\u0631 \u06f5 \u0641\u0627\u06cc\u0644 \u062f\u0631 \u0647\u0631 \u067e\u06cc\u0627\u0645.',
      fileTooBig: '\u0627\u06cc\u0646 \u0641\u0627\u06cc\u0644 \u0628\u06cc\u0634 \u0627\u0632 \u062d\u062f \u0628\u0632\u0631\u06af \u0627\u0633\u062a.', fileType: '\u0641\u0642\u0637 \u062a\u0635\u0648\u06cc\u0631 (PNG\u060c JPEG\u060c GIF\u060c WebP) \u0648 \u0641\u0627\u06cc\u0644 PDF \u0631\u0627 \u0645\u06cc\u200c\u062a\u0648\u0627\u0646 \u0641\u0631\u0633\u062a\u0627\u062f.', uploadFailed: '\u0628\u0627\u0631\u06af\u0630\u0627\u0631\u06cc \u0641\u0627\u06cc\u0644 \u0627\u0646\u062c\u0627\u0645 \u0646\u0634\u062f. \u0644\u0637\u0641\u0627\u064b \u062f\u0648\u0628\u0627\u0631\u0647 \u062a\u0644\u0627\u0634 \u06a9\u0646\u06cc\u062f.',
      contactPrompt: '\u0627\u06cc\u0645\u06cc\u0644 \u062e\u0648\u062f \u0631\u0627 \u0628\u06af\u0630\u0627\u0631\u06cc\u062f \u062a\u0627 \u0627\u06af\u0631 \u0627\u06cc\u0646\u062c\u0627 \u0646\u0628\u0648\u062f\u06cc\u062f\u060c \u067e\u0627\u0633\u062e \u0631\u0627 \u0628\u0647 \u0622\u0646 \u0628\u0641\u0631\u0633\u062a\u06cc\u0645', save: '\u0630\u062e\u06cc\u0631\u0647', contactSaved: '\u0627\u06af\u0631 \u0627\u06cc\u0646\u062c\u0627 \u0646\u0628\u0648\u062f\u06cc\u062f\u060c \u0628\u0647 {email} \u0627\u06cc\u0645\u06cc\u0644 \u0645\u06cc\u200c\u0632\u0646\u06cc\u0645',
      change: '\u062a\u063a\u06cc\u06cc\u0631', badEmail: '\u0627\u06cc\u0646 \u0646\u0634\u0627\u0646\u06cc \u0627\u06cc\u0645\u06cc\u0644 \u062f\u0631\u0633\u062a \u0628\u0647 \u0646\u0638\u0631 \u0646\u0645\u06cc\u200c\u0631\u0633\u062f.',
    },
    ar: {
      title: '\u062a\u062d\u062f\u0651\u062b \u0645\u0639\u0646\u0627', placeholder: '\u0627\u0643\u062a\u0628 \u0631\u0633\u0627\u0644\u0629\u2026', send: '\u0625\u0631\u0633\u0627\u0644', open: '\u0641\u062a\u062d \u0627\u0644\u0645\u062d\u0627\u062f\u062b\u0629',
      close: '\u0625\u063a\u0644\u0627\u0642 \u0627\u0644\u0645\u062d\u0627\u062f\u062b\u0629', connecting: '\u062c\u0627\u0631\u064d \u0627\u0644\u0627\u062a\u0635\u0627\u0644\u2026', online: '\u0645\u062a\u0635\u0644', reconnecting: '\u062c\u0627\u0631\u064d \u0625\u0639\u0627\u062f\u0629 \u0627\u0644\u0627\u062a\u0635\u0627\u0644\u2026',
      idle: '\u0645\u062d\u0627\u062f\u062b\u0629', offline: '\u0627\u0644\u0645\u062d\u0627\u062f\u062b\u0629 \u063a\u064a\u0631 \u0645\u062a\u0627\u062d\u0629 \u062d\u0627\u0644\u064a\u064b\u0627.', sent: '\u0623\u064f\u0631\u0633\u0644\u062a', delivered: '\u062a\u0645 \u0627\u0644\u062a\u0633\u0644\u064a\u0645',
      failed: '\u0644\u0645 \u062a\u064f\u0631\u0633\u0644', you: '\u0623\u0646\u062a', agent: '\u0627\u0644\u062f\u0639\u0645', refused: '\u062a\u0639\u0630\u0651\u0631 \u0627\u0644\u062a\u062d\u0642\u0642 \u0645\u0646 \u0647\u0648\u064a\u062a\u0643. \u064a\u064f\u0631\u062c\u0649 \u062a\u0633\u062c\u064a\u0644 \u0627\u0644\u062f\u062e\u0648\u0644 \u0645\u062c\u062f\u062f\u064b\u0627.',
      origin: '\u0627\u0644\u0645\u062d\u0627\u062f\u062b\u0629 \u063a\u064a\u0631 \u0645\u0641\u0639\u0651\u0644\u0629 \u0639\u0644\u0649 \u0647\u0630\u0627 \u0627\u0644\u0645\u0648\u0642\u0639.', tooBig: '\u0647\u0630\u0647 \u0627\u0644\u0631\u0633\u0627\u0644\u0629 \u0623\u0637\u0648\u0644 \u0645\u0646 \u0623\u0646 \u062a\u064f\u0631\u0633\u0644.',
      attach: '\u0625\u0631\u0641\u0627\u0642 \u0645\u0644\u0641', attachments: '\u0627\u0644\u0645\u0644\u0641\u0627\u062a \u0627\u0644\u0645\u0631\u0641\u0642\u0629', remove: '\u0625\u0632\u0627\u0644\u0629',
      uploading: '\u062c\u0627\u0631\u064d \u0627\u0644\u0631\u0641\u0639\u2026', waitUploads: '\u064a\u064f\u0631\u062c\u0649 \u0627\u0644\u0627\u0646\u062a\u0638\u0627\u0631 \u062d\u062a\u0649 \u064a\u0643\u062a\u0645\u0644 \u0631\u0641\u0639 \u0627\u0644\u0645\u0644\u0641\u0627\u062a.', tooManyFiles: '\u062e\u0645\u0633\u0629 \u0645\u0644\u0641\u0627\u062a \u0643\u062d\u062f\u0651 \u0623\u0642\u0635\u0649 \u0641\u064a \u0643\u0644 \u0631\u0633\u0627\u0644\u0629.',
      fileTooBig: '\u0647\u0630\u0627 \u0627\u0644\u0645\u0644\u0641 \u0643\u0628\u064a\u0631 \u062c\u062f\u064b\u0627.', fileType: '\u064a\u0645\u0643\u0646 \u0625\u0631\u0633\u0627\u0644 \u0627\u0644\u0635\u0648\u0631 (PNG \u0648JPEG \u0648GIF \u0648WebP) \u0648\u0645\u0644\u0641\u0627\u062a PDF \u0641\u0642\u0637.', uploadFailed: '\u062a\u0639\u0630\u0651\u0631 \u0631\u0641\u0639 \u0627\u0644\u0645\u0644\u0641. \u064a\u064f\u0631\u062c\u0649 \u0627\u0644\u0645\u062d\u0627\u0648\u0644\u0629 \u0645\u0631\u0629 \u0623\u062e\u0631\u0649.',
      contactPrompt: '\u0627\u062a\u0631\u0643 \u0628\u0631\u064a\u062f\u0643 \u0627\u0644\u0625\u0644\u0643\u062a\u0631\u0648\u0646\u064a \u0648\u0633\u0646\u0631\u062f\u0651 \u0639\u0644\u064a\u0643 \u0639\u0628\u0631\u0647 \u0625\u0646 \u0644\u0645 \u062a\u0643\u0646 \u0645\u062a\u0635\u0644\u064b\u0627', save: '\u062d\u0641\u0638', contactSaved: '\u0633\u0646\u0631\u0627\u0633\u0644\u0643 \u0639\u0644\u0649 {email} \u0625\u0646 \u0644\u0645 \u062a\u0643\u0646 \u0645\u062a\u0635\u0644\u064b\u0627',
      change: '\u062a\u063a\u064a\u064a\u0631', badEmail: '\u0644\u0627 \u064a\u0628\u062f\u0648 \u0647\u0630\u0627 \u0639\u0646\u0648\u0627\u0646 \u0628\u0631\u064a\u062f \u0625\u0644\u0643\u062a\u0631\u0648\u0646\u064a \u0635\u062d\u064a\u062d\u064b\u0627.',
    },
    zh: {
      title: '\u8054\u7cfb\u6211\u4eec', placeholder: '\u8f93\u5165\u6d88\u606f\u2026', send: '\u53d1\u9001', open: '\u6253\u5f00\u804a\u5929',
      close: '\u5173\u95ed\u804a\u5929', connecting: '\u6b63\u5728\u8fde\u63a5\u2026', online: '\u5728\u7ebf', reconnecting: '\u6b63\u5728\u91cd\u65b0\u8fde\u63a5\u2026',
      idle: '\u804a\u5929', offline: '\u804a\u5929\u6682\u65f6\u4e0d\u53ef\u7528\u3002', sent: '\u5df2\u53d1\u9001', delivered: '\u5df2\u9001\u8fbe',
      failed: '\u672a\u53d1\u9001', you: '\u6211', agent: '\u5ba2\u670d', refused: '\u65e0\u6cd5\u9a8c\u8bc1\u60a8\u7684\u8eab\u4efd\uff0c\u8bf7\u91cd\u65b0\u767b\u5f55\u3002',
      origin: '\u6b64\u7f51\u7ad9\u672a\u542f\u7528\u804a\u5929\u3002', tooBig: '\u6d88\u606f\u592a\u957f\uff0c\u65e0\u6cd5\u53d1\u9001\u3002',
      attach: '\u6dfb\u52a0\u9644\u4ef6', attachments: '\u5f85\u53d1\u9001\u7684\u6587\u4ef6', remove: '\u79fb\u9664',
      uploading: '\u6b63\u5728\u4e0a\u4f20\u2026', waitUploads: '\u8bf7\u7b49\u5f85\u6587\u4ef6\u4e0a\u4f20\u5b8c\u6210\u3002', tooManyFiles: '\u6bcf\u6761\u6d88\u606f\u6700\u591a 5 \u4e2a\u6587\u4ef6\u3002',
      fileTooBig: '\u6587\u4ef6\u592a\u5927\u3002', fileType: '\u53ea\u80fd\u53d1\u9001\u56fe\u7247\uff08PNG\u3001JPEG\u3001GIF\u3001WebP\uff09\u548c PDF \u6587\u4ef6\u3002', uploadFailed: '\u6587\u4ef6\u4e0a\u4f20\u5931\u8d25\uff0c\u8bf7\u91cd\u8bd5\u3002',
      contactPrompt: '\u7559\u4e0b\u60a8\u7684\u90ae\u7bb1\uff0c\u5982\u679c\u60a8\u4e0d\u5728\u7ebf\uff0c\u6211\u4eec\u4f1a\u901a\u8fc7\u90ae\u4ef6\u56de\u590d', save: '\u4fdd\u5b58', contactSaved: '\u5982\u679c\u60a8\u4e0d\u5728\u7ebf\uff0c\u6211\u4eec\u4f1a\u53d1\u90ae\u4ef6\u5230 {email}',
      change: '\u66f4\u6539', badEmail: '\u8fd9\u4f3c\u4e4e\u4e0d\u662f\u6709\u6548\u7684\u90ae\u7bb1\u5730\u5740\u3002',
    },
  };
  const strings = STRINGS[lang] || STRINGS.en;
  const t = (key) => strings[key] || STRINGS.en[key] || key;

  // ---- Storage: one JSON object under omnid-chat:<channel> -------------------
  // { visitor_id, visitor_token, outbox: [{id, text, at, attachments?}], read: [event_id] }
  // An outbox item's attachments are [{id, name, media_type, size}]: the id
  // is what a resend carries, the rest what the pending message shows.
  // Read-modify-write on every change, since other tabs share it.
  const STORE_KEY = 'omnid-chat:' + channel;
  let memory = {};
  let storageWorks = true;

  function load() {
    if (!storageWorks) return memory;
    try {
      const parsed = JSON.parse(localStorage.getItem(STORE_KEY) || '{}');
      return parsed && typeof parsed === 'object' ? parsed : {};
    } catch (_) {
      storageWorks = false; // blocked storage (privacy modes): this tab only
      return memory;
    }
  }
  function update(change) {
    const s = load();
    change(s);
    memory = s;
    if (storageWorks) {
      try { localStorage.setItem(STORE_KEY, JSON.stringify(s)); } catch (_) { storageWorks = false; }
    }
    return s;
  }
  function outbox() {
    const o = load().outbox;
    if (!Array.isArray(o)) return [];
    return o.filter((m) => m && typeof m.id === 'string' && typeof m.text === 'string')
      .map((m) => Object.assign({}, m, { attachments: files(m.attachments, true) }));
  }

  // Attachments as shown: [{name, media_type, size}], and with their upload
  // id when `withId` (the outbox's; one without an id cannot be resent).
  function files(list, withId) {
    if (!Array.isArray(list)) return [];
    const out = [];
    for (const a of list) {
      if (!a || typeof a !== 'object' || (withId && typeof a.id !== 'string')) continue;
      const f = {
        name: typeof a.name === 'string' ? a.name : '',
        media_type: typeof a.media_type === 'string' ? a.media_type : '',
        size: typeof a.size === 'number' && isFinite(a.size) ? a.size : null,
      };
      if (withId) f.id = a.id;
      out.push(f);
    }
    return out;
  }
  const removeFromOutbox = (id) => update((s) => { s.outbox = outbox().filter((m) => m.id !== id); });
  const readIds = () => new Set(Array.isArray(load().read) ? load().read : []);

  // Random, 22 characters of [A-Za-z0-9_-]: the protocol allows 1-64.
  const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-';
  function newClientId() {
    const bytes = new Uint8Array(22);
    if (window.crypto && crypto.getRandomValues) crypto.getRandomValues(bytes);
    else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    return Array.from(bytes, (b) => ALPHABET[b & 63]).join('');
  }

  // ---- Model ------------------------------------------------------------------
  // direction: 'inbound' (the visitor's, as in omni.inbound.v1) or 'outbound'
  // (an agent's reply). state: pending | acked | failed for the visitor's,
  // received | read for replies.
  const entries = [];
  const byEvent = new Map();
  const byClient = new Map();

  function parseTime(v) {
    if (typeof v === 'number' && isFinite(v)) return v < 1e11 ? v * 1000 : v; // seconds or ms
    const ms = typeof v === 'string' ? Date.parse(v) : NaN;
    return isNaN(ms) ? Date.now() : ms;
  }
  function normDirection(d) {
    return /^(in|inbound|direction_inbound|visitor)$/i.test(String(d)) ? 'inbound' : 'outbound';
  }

  function makeEntry(fields) {
    const e = Object.assign({ event_id: null, client_message_id: null, el: null, mark: null, attachments: [] }, fields);
    if (e.event_id) byEvent.set(e.event_id, e);
    if (e.client_message_id) byClient.set(e.client_message_id, e);
    render(e);
    return e;
  }
  function addEntry(e) {
    const stick = nearBottom();
    entries.push(e);
    ui.list.appendChild(e.el);
    if (stick || e.direction === 'inbound') scrollToEnd();
  }
  function setEvent(e, id) {
    if (typeof id !== 'string' || !id) return;
    e.event_id = id;
    byEvent.set(id, e);
  }

  // ---- DOM ----------------------------------------------------------------------
  const ui = {};
  let timeFormat;
  try { timeFormat = new Intl.DateTimeFormat(locale, { hour: '2-digit', minute: '2-digit' }); } catch (_) {
    timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text; // never innerHTML: texts come from the network
    return node;
  }

  function icon(d) {
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    svg.setAttribute('class', 'omnid-chat__icon');
    const path = document.createElementNS(ns, 'path');
    path.setAttribute('d', d);
    svg.appendChild(path);
    return svg;
  }

  function render(e) {
    const mine = e.direction === 'inbound';
    const li = el('li', 'omnid-chat__msg omnid-chat__msg--' + (mine ? 'visitor' : 'agent'));
    li.appendChild(el('span', 'omnid-chat__sr', t(mine ? 'you' : 'agent') + ': '));
    if (e.text || !e.attachments.length) {
      const bubble = el('div', 'omnid-chat__bubble', e.text);
      bubble.dir = 'auto'; // a Persian reply on an English page (or the reverse) still reads right
      li.appendChild(bubble);
    }
    if (e.attachments.length) {
      const list = el('ul', 'omnid-chat__files');
      for (const f of e.attachments) {
        const item = el('li', 'omnid-chat__chip');
        item.append(fileIcon(f.media_type), fileName(f.name || f.media_type));
        item.title = describeFile(f);
        list.appendChild(item);
      }
      li.appendChild(list);
    }
    const meta = el('div', 'omnid-chat__meta');
    const time = el('time', 'omnid-chat__time', timeFormat.format(new Date(e.at)));
    time.dateTime = new Date(e.at).toISOString();
    li.appendChild(meta);
    meta.appendChild(time);
    if (mine) {
      // The glyph comes from CSS, so a state change does not re-announce the
      // message in the live region (only additions are announced).
      e.mark = el('span', 'omnid-chat__mark');
      e.mark.setAttribute('role', 'img');
      meta.appendChild(e.mark);
    }
    e.el = li;
    updateMark(e);
  }

  // A picture for images, a page for the rest (PDF).
  function fileIcon(mediaType) {
    return icon(/^image\//.test(mediaType || '')
      ? 'M4 5h16v14H4zM4 16l5-5 4 4 2-2 5 5M15.5 9.5h.01'
      : 'M6 3h8l4 4v14H6zM14 3v4h4');
  }
  function fileName(name) {
    const span = el('span', 'omnid-chat__chip-name', name);
    span.dir = 'auto'; // a Latin file name inside a right-to-left panel
    return span;
  }

  let sizeFormat = null;
  try {
    sizeFormat = new Intl.NumberFormat(locale, { style: 'unit', unit: 'kilobyte', unitDisplay: 'short', maximumFractionDigits: 0 });
  } catch (_) { /* an engine without unit formatting: the name alone */ }
  function describeFile(f) {
    return f.size !== null && f.size >= 0 && sizeFormat
      ? (f.name || f.media_type) + ' (' + sizeFormat.format(Math.max(1, Math.round(f.size / 1024))) + ')'
      : f.name || f.media_type;
  }

  function updateMark(e) {
    if (!e.mark) return;
    const label = t(e.state === 'acked' ? 'delivered' : e.state === 'failed' ? 'failed' : 'sent');
    e.mark.className = 'omnid-chat__mark omnid-chat__mark--' + e.state;
    e.mark.title = label;
    e.mark.setAttribute('aria-label', label);
  }

  function buildUi() {
    const root = ui.root = el('div', 'omnid-chat');
    root.dir = dir;
    root.lang = locale;
    root.hidden = true; // shown once widget.css is in, so the page never sees it unstyled

    const launcher = ui.launcher = el('button', 'omnid-chat__launcher');
    launcher.type = 'button';
    launcher.setAttribute('aria-label', t('open'));
    launcher.setAttribute('aria-expanded', 'false');
    launcher.appendChild(icon('M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z'));
    ui.badge = el('span', 'omnid-chat__badge');
    ui.badge.hidden = true;
    ui.badge.setAttribute('aria-hidden', 'true');
    launcher.appendChild(ui.badge);

    const panel = ui.panel = el('section', 'omnid-chat__panel');
    panel.id = 'omnid-chat-panel-' + newClientId().slice(0, 8);
    panel.hidden = true;
    launcher.setAttribute('aria-controls', panel.id);

    const header = el('header', 'omnid-chat__header');
    const title = el('h2', 'omnid-chat__title', t('title'));
    title.id = panel.id + '-title';
    panel.setAttribute('aria-labelledby', title.id);
    ui.status = el('span', 'omnid-chat__status');
    ui.status.setAttribute('role', 'status');
    const heading = el('div', 'omnid-chat__heading');
    heading.append(title, ui.status);
    const closeButton = el('button', 'omnid-chat__close');
    closeButton.type = 'button';
    closeButton.setAttribute('aria-label', t('close'));
    closeButton.appendChild(icon('M6 6l12 12M18 6L6 18'));
    header.append(heading, closeButton);

    ui.list = el('ol', 'omnid-chat__list');
    ui.list.setAttribute('aria-live', 'polite');
    ui.list.setAttribute('aria-relevant', 'additions');
    ui.list.setAttribute('aria-labelledby', title.id);
    ui.list.tabIndex = 0; // scrollable by keyboard

    ui.notice = el('p', 'omnid-chat__notice');
    ui.notice.setAttribute('role', 'status');
    ui.notice.hidden = true;

    const form = ui.form = el('form', 'omnid-chat__form');
    const input = ui.input = el('textarea', 'omnid-chat__input');
    input.rows = 1;
    input.maxLength = maxLength;
    input.placeholder = t('placeholder');
    input.setAttribute('aria-label', t('placeholder'));
    input.dir = 'auto';
    const sendButton = ui.send = el('button', 'omnid-chat__send');
    sendButton.type = 'submit';
    sendButton.setAttribute('aria-label', t('send'));
    sendButton.appendChild(icon('M3 20l18-8L3 4v6l12 2-12 2z'));

    // Attachments: a paperclip opening the (hidden) file input, and the
    // chosen files as chips above the text box until the message goes.
    ui.pending = el('ul', 'omnid-chat__pending');
    ui.pending.setAttribute('aria-label', t('attachments'));
    ui.pending.hidden = true;
    const attach = ui.attach = el('button', 'omnid-chat__attach');
    attach.type = 'button';
    attach.title = t('attach');
    attach.setAttribute('aria-label', t('attach'));
    attach.appendChild(icon('M21.4 11.1l-9.2 9.2a6 6 0 0 1-8.5-8.5l9.2-9.2a4 4 0 0 1 5.7 5.7l-9.2 9.2a2 2 0 0 1-2.8-2.8l8.5-8.5'));
    const picker = ui.picker = el('input', 'omnid-chat__picker');
    picker.type = 'file';
    picker.accept = ACCEPT;
    picker.multiple = true;
    picker.hidden = true;
    picker.tabIndex = -1;
    form.append(ui.pending, attach, input, sendButton, picker);

    buildContact(panel.id);
    panel.append(header, ui.list, ui.contact, ui.notice, form);
    root.append(panel, launcher);
    document.body.appendChild(root);

    launcher.addEventListener('click', () => (isOpen ? close() : open()));
    closeButton.addEventListener('click', () => { close(); launcher.focus(); });
    panel.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape') { close(); launcher.focus(); }
    });
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (submit(input.value)) input.value = '';
      input.focus();
    });
    input.addEventListener('keydown', (ev) => {
      // Enter sends, Shift+Enter is a newline; never while an IME is composing
      // (Chinese, Japanese... confirm a candidate with Enter).
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
        ev.preventDefault();
        form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event('submit', { cancelable: true }));
      }
    });
    input.addEventListener('input', typing);
    input.addEventListener('blur', () => stopTyping());
    attach.addEventListener('click', () => picker.click());
    picker.addEventListener('change', () => {
      const chosen = Array.from(picker.files || []);
      picker.value = ''; // choosing the same file again is a change too
      addFiles(chosen);
    });

    const link = el('link');
    link.rel = 'stylesheet';
    link.href = new URL('widget.css', base).href;
    const reveal = () => { root.hidden = false; };
    link.addEventListener('load', reveal);
    link.addEventListener('error', reveal); // unstyled beats invisible
    document.head.appendChild(link);
  }

  // "Leave your email": a form under the messages while the channel knows no
  // address for the visitor, else a line saying which one, with "change".
  function buildContact(idBase) {
    const box = ui.contact = el('div', 'omnid-chat__contact');
    box.hidden = true; // until the welcome says whether an address is known

    const form = ui.contactForm = el('form', 'omnid-chat__contact-form');
    form.noValidate = true; // the channel decides; its error is shown below
    const input = ui.contactInput = el('input', 'omnid-chat__contact-input');
    input.id = idBase + '-email';
    input.type = 'email';
    input.name = 'email';
    input.autocomplete = 'email';
    input.spellcheck = false;
    input.maxLength = 254;
    input.dir = 'ltr'; // an address reads left to right in any panel
    input.placeholder = 'name@example.com';
    const label = el('label', 'omnid-chat__contact-label', t('contactPrompt'));
    label.htmlFor = input.id;
    const save = ui.contactSave = el('button', 'omnid-chat__contact-save', t('save'));
    save.type = 'submit';
    const row = el('div', 'omnid-chat__contact-row');
    row.append(input, save);
    const error = ui.contactError = el('p', 'omnid-chat__contact-error');
    error.id = idBase + '-email-error';
    error.setAttribute('role', 'alert');
    error.hidden = true;
    input.setAttribute('aria-describedby', error.id);
    form.append(label, row, error);

    const saved = ui.contactSaved = el('p', 'omnid-chat__contact-saved');
    saved.hidden = true;
    ui.contactText = el('span', 'omnid-chat__contact-text');
    ui.contactText.id = idBase + '-email-saved';
    const change = ui.contactChange = el('button', 'omnid-chat__contact-change', t('change'));
    change.type = 'button';
    change.setAttribute('aria-describedby', ui.contactText.id);
    saved.append(ui.contactText, ' ', change);
    box.append(form, saved);

    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      saveContact(input.value.trim());
    });
    input.addEventListener('input', () => contactProblem(''));
    change.addEventListener('click', () => {
      contact.editing = true;
      input.value = contact.email || '';
      contactProblem('');
      renderContact();
      input.focus();
      input.select();
    });
  }

  function nearBottom() {
    const l = ui.list;
    return l.scrollHeight - l.scrollTop - l.clientHeight < 40;
  }
  function scrollToEnd() { ui.list.scrollTop = ui.list.scrollHeight; }

  let noticeTimer = 0;
  function showNotice(text, sticky) {
    clearTimeout(noticeTimer);
    ui.notice.textContent = text;
    ui.notice.hidden = !text;
    ui.notice.classList.toggle('omnid-chat__notice--sticky', !!sticky);
    if (text && !sticky) noticeTimer = setTimeout(() => showNotice(''), 6000);
  }

  function setStatus(s) {
    status = s;
    ui.root.dataset.status = s; // CSS colours the dot from it
    ui.status.textContent = s === 'offline' ? '' : t(s);
    updateComposer();
    renderContact();
  }

  // Sending waits for every chosen file to be uploaded; a sixth file has
  // no room.
  function updateComposer() {
    const stopped = status === 'offline';
    ui.input.disabled = stopped;
    ui.send.disabled = stopped || pending.some((p) => p.state !== 'ready');
    ui.attach.disabled = stopped || pending.length >= MAX_FILES;
    ui.pending.hidden = pending.length === 0;
  }

  function updateBadge() {
    const unread = isOpen ? 0 : entries.filter((e) => e.state === 'received').length;
    ui.badge.hidden = unread === 0;
    ui.badge.textContent = unread > 9 ? '9+' : String(unread);
    ui.launcher.setAttribute('aria-label', unread ? t('open') + ' (' + unread + ')' : t('open'));
  }

  // ---- Email for replies while away ------------------------------------------------
  // known: a welcome said whether the channel has an address; email: that
  // address; editing: "change" reopened the form; saving: the address sent
  // and not yet answered.
  const contact = { known: false, email: null, editing: false, saving: null };

  function renderContact() {
    if (!ui.contact) return;
    ui.contact.hidden = !contact.known;
    const editing = !contact.email || contact.editing;
    ui.contactForm.hidden = !editing;
    ui.contactSaved.hidden = editing;
    ui.contactSave.disabled = !welcomed || contact.saving !== null;
    ui.contactForm.setAttribute('aria-busy', String(contact.saving !== null));
    if (contact.email) {
      // The address inside the sentence, isolated so that it reads left to
      // right inside a Persian or Arabic one.
      const [before, after] = t('contactSaved').split('{email}');
      ui.contactText.replaceChildren(before || '', el('bdi', 'omnid-chat__contact-email', contact.email), after || '');
    }
  }

  function contactProblem(text) {
    ui.contactError.textContent = text;
    ui.contactError.hidden = !text;
    if (text) ui.contactInput.setAttribute('aria-invalid', 'true');
    else ui.contactInput.removeAttribute('aria-invalid');
  }

  function saveContact(email) {
    if (!email) {
      contactProblem(t('badEmail'));
      ui.contactInput.focus();
      return;
    }
    if (!welcomed || contact.saving !== null) return;
    if (!sendFrame({ type: 'contact', email })) return;
    contact.saving = email;
    contactProblem('');
    renderContact();
  }

  function onContact(f) {
    if (typeof f.email !== 'string' || !f.email) return;
    // Focus was in the form that is about to hide: keep it nearby.
    const hadFocus = ui.contactForm.contains(document.activeElement);
    contact.email = f.email;
    contact.saving = null;
    contact.editing = false;
    contactProblem('');
    renderContact();
    if (hadFocus) ui.contactChange.focus();
  }

  function onContactRefused() {
    contact.saving = null;
    contactProblem(t('badEmail'));
    renderContact();
    ui.contactInput.focus();
  }

  // ---- Panel ------------------------------------------------------------------
  let isOpen = false;

  function open(atLoad) {
    isOpen = true;
    ui.panel.hidden = false;
    ui.root.classList.add('omnid-chat--open');
    ui.launcher.setAttribute('aria-expanded', 'true');
    connect(); // the first open is what creates an anonymous visitor
    scrollToEnd();
    if (atLoad !== true && !ui.input.disabled) ui.input.focus({ preventScroll: true }); // not stolen at page load
    markRead();
    updateBadge();
  }
  function close() {
    isOpen = false;
    ui.panel.hidden = true;
    ui.root.classList.remove('omnid-chat--open');
    ui.launcher.setAttribute('aria-expanded', 'false');
    stopTyping();
    updateBadge();
  }

  // ---- Sending ----------------------------------------------------------------
  function submit(raw) {
    const text = String(raw).trim();
    if (status === 'offline') return null;
    if (pending.some((p) => p.state !== 'ready')) {
      showNotice(t('waitUploads'));
      return null;
    }
    if (!text && !pending.length) return null;
    const item = { id: newClientId(), text: text.slice(0, maxLength), at: Date.now() };
    if (pending.length) {
      item.attachments = pending.map((p) => ({ id: p.id, name: p.name, media_type: p.media_type, size: p.size }));
    }
    // Into the outbox first: a reload or a lost socket before the ack resends it.
    update((s) => { s.outbox = outbox().concat([item]); });
    for (const p of pending.slice()) dropPending(p);
    addEntry(makeEntry({
      direction: 'inbound', text: item.text, state: 'pending', client_message_id: item.id, at: item.at,
      attachments: files(item.attachments, false),
    }));
    stopTyping();
    if (welcomed) transmit(item);
    else connect();
    return item.id;
  }

  function transmit(item) {
    const frame = { type: 'message', client_message_id: item.id, text: item.text };
    if (item.attachments && item.attachments.length) frame.attachments = item.attachments.map((a) => ({ id: a.id }));
    if (sendFrame(frame)) sentHere.push(item.id);
  }

  // ---- Attachments ------------------------------------------------------------
  // Each chosen file until its message is sent: state queued (waiting for a
  // welcome, whose visitor token the upload needs), uploading, waiting (to
  // retry after a 429 or 503), or ready (uploaded: `id` is its sha256).
  const pending = [];

  function addFiles(chosen) {
    if (!chosen.length || status === 'offline') return;
    const room = MAX_FILES - pending.length;
    if (chosen.length > room) showNotice(t('tooManyFiles'));
    for (const file of chosen.slice(0, Math.max(0, room))) {
      const p = {
        file, name: file.name || '', media_type: file.type || '', size: file.size,
        state: 'queued', id: null, tries: 0, timer: 0, controller: null, el: null, label: null,
      };
      pending.push(p);
      renderPending(p);
    }
    updateComposer();
    startUploads();
  }

  function renderPending(p) {
    const chip = p.el = el('li', 'omnid-chat__chip');
    p.label = el('span', 'omnid-chat__sr');
    const remove = el('button', 'omnid-chat__chip-remove');
    remove.type = 'button';
    remove.setAttribute('aria-label', t('remove') + ' ' + (p.name || p.media_type));
    remove.appendChild(icon('M7 7l10 10M17 7L7 17'));
    remove.addEventListener('click', () => {
      dropPending(p);
      ui.input.focus();
    });
    chip.append(fileIcon(p.media_type), fileName(p.name || p.media_type), p.label, remove);
    chip.title = describeFile(p);
    ui.pending.appendChild(chip);
    updatePending(p);
  }

  function updatePending(p) {
    const busy = p.state !== 'ready';
    p.el.classList.toggle('omnid-chat__chip--busy', busy);
    p.el.setAttribute('aria-busy', String(busy));
    p.label.textContent = busy ? ' ' + t('uploading') : '';
  }

  function dropPending(p) {
    const at = pending.indexOf(p);
    if (at < 0) return;
    pending.splice(at, 1);
    clearTimeout(p.timer);
    if (p.controller) p.controller.abort();
    p.el.remove();
    updateComposer();
  }

  function startUploads() {
    if (!welcomed) return; // onWelcome starts them
    for (const p of pending) if (p.state === 'queued') upload(p);
  }

  async function upload(p) {
    const s = load();
    if (typeof s.visitor_id !== 'string' || typeof s.visitor_token !== 'string') return;
    p.state = 'uploading';
    p.tries++;
    updatePending(p);
    p.controller = window.AbortController ? new AbortController() : null;
    let response;
    let body = null;
    try {
      response = await fetch(new URL('uploads?name=' + encodeURIComponent(p.name), base).href, {
        method: 'POST',
        headers: { 'x-omnid-visitor-id': s.visitor_id, 'x-omnid-visitor-token': s.visitor_token },
        body: p.file,
        signal: p.controller ? p.controller.signal : undefined,
      });
      body = await response.json().catch(() => null);
    } catch (_) {
      if (pending.indexOf(p) >= 0) retryUpload(p, 0); // the network, not the file
      return;
    }
    if (pending.indexOf(p) < 0) return; // removed meanwhile
    p.controller = null;
    if (response.status === 201 && body && typeof body.id === 'string') {
      p.id = body.id;
      if (typeof body.name === 'string' && body.name) p.name = body.name;
      if (typeof body.media_type === 'string' && body.media_type) p.media_type = body.media_type;
      if (typeof body.size === 'number') p.size = body.size;
      p.state = 'ready';
      updatePending(p);
      updateComposer();
      return;
    }
    const code = body && typeof body.code === 'string' ? body.code : String(response.status);
    if (response.status === 429 || response.status === 503) {
      retryUpload(p, parseInt(response.headers.get('retry-after'), 10));
      return;
    }
    failUpload(p, code);
  }

  // Busy (too many uploads, storage down) or unreachable: again later, at
  // most four tries, after Retry-After when the channel says (within a
  // minute), else 1, 2, 4 s.
  function retryUpload(p, seconds) {
    if (p.tries >= 4) { failUpload(p, 'retries'); return; }
    p.state = 'waiting';
    updatePending(p);
    const wait = seconds > 0 ? Math.min(seconds, 60) * 1000 : 1000 * Math.pow(2, p.tries - 1);
    p.timer = setTimeout(() => {
      if (pending.indexOf(p) < 0) return;
      p.state = 'queued';
      startUploads();
    }, wait);
  }

  function failUpload(p, code) {
    if (window.console) console.warn('[omnid-chat] upload', p.name, code);
    dropPending(p);
    const why = code === 'too_large' ? 'fileTooBig' : code === 'unsupported_type' ? 'fileType' : 'uploadFailed';
    showNotice((p.name ? p.name + ': ' : '') + t(why));
  }

  // Throttled: at most one `typing: true` every 3 s while keys come, and one
  // `typing: false` after 4 s of quiet, on send, or on blur.
  let typingOn = false;
  let typingSentAt = 0;
  let typingIdle = 0;
  function typing() {
    if (!welcomed) return;
    clearTimeout(typingIdle);
    if (!ui.input.value.trim()) { stopTyping(); return; }
    if (!typingOn || Date.now() - typingSentAt > 3000) {
      if (sendFrame({ type: 'typing', on: true })) { typingOn = true; typingSentAt = Date.now(); }
    }
    typingIdle = setTimeout(stopTyping, 4000);
  }
  function stopTyping() {
    clearTimeout(typingIdle);
    if (typingOn) sendFrame({ type: 'typing', on: false });
    typingOn = false;
  }

  // A `read` for each reply the visitor could see: panel open, tab visible.
  // Sent ids are remembered (the newest 200) so history does not resend them.
  function markRead() {
    if (!isOpen || !welcomed || document.visibilityState === 'hidden') return;
    const already = readIds(); // another tab may have told the channel
    const fresh = [];
    for (const e of entries) {
      if (e.state !== 'received' || !e.event_id) continue;
      if (already.has(e.event_id)) e.state = 'read';
      else fresh.push(e);
    }
    for (const e of fresh) {
      if (!sendFrame({ type: 'read', event_id: e.event_id })) return;
      e.state = 'read';
    }
    if (fresh.length) {
      update((s) => { s.read = Array.from(readIds()).concat(fresh.map((e) => e.event_id)).slice(-200); });
    }
    updateBadge();
  }

  // ---- Frames from the channel ------------------------------------------------
  function onWelcome(f) {
    const before = load().visitor_id;
    if (typeof f.visitor_id === 'string' && typeof f.visitor_token === 'string') {
      update((s) => {
        if (s.visitor_id !== f.visitor_id) s.read = [];
        s.visitor_id = f.visitor_id;
        s.visitor_token = f.visitor_token;
      });
      if (before && before !== f.visitor_id) forgetConversation();
    }
    identityState = typeof f.identity === 'string' ? f.identity : 'none';
    welcomed = true;
    attempt = 0;
    clearTimeout(welcomeTimer);
    const saved = typeof f.contact_email === 'string' && f.contact_email ? f.contact_email : null;
    if (saved !== contact.email) contact.editing = false;
    // The form only where the channel emails replies (`[offline_email]`).
    contact.known = f.email_replies === true;
    contact.email = saved;
    contact.saving = null;
    setStatus('online');
    if (!ui.notice.classList.contains('omnid-chat__notice--sticky')) showNotice('');
    // Every unacknowledged message, in order, with its first id: the event id
    // derives from it, so the channel appends each one once.
    for (const item of outbox()) transmit(item);
    startUploads();
    markRead();
  }

  // The channel started a new conversation (token no longer valid): what is
  // on screen belonged to the old one, except what still waits to be sent.
  function forgetConversation() {
    // Files uploaded for the old visitor are not the new one's: again.
    for (const p of pending) {
      if (p.state === 'ready') { p.state = 'queued'; p.id = null; updatePending(p); }
    }
    updateComposer();
    for (const e of entries.splice(0)) {
      if (e.state === 'pending') entries.push(e);
      else e.el.remove();
    }
    byEvent.clear();
    byClient.clear();
    for (const e of entries) byClient.set(e.client_message_id, e);
  }

  function onHistory(messages) {
    if (!Array.isArray(messages)) return;
    const read = readIds();
    const ordered = [];
    const seen = new Set();
    for (const m of messages) {
      if (!m || typeof m !== 'object') continue;
      const attachments = files(m.attachments, false);
      if (typeof m.text !== 'string' && !attachments.length) continue;
      const text = typeof m.text === 'string' ? m.text : '';
      const direction = normDirection(m.direction);
      const cid = typeof m.client_message_id === 'string' ? m.client_message_id : null;
      const eid = typeof m.event_id === 'string' && m.event_id ? m.event_id : null;
      let e = (eid && byEvent.get(eid)) || (cid && byClient.get(cid));
      if (!e) {
        const state = direction === 'inbound' ? 'acked' : read.has(eid) ? 'read' : 'received';
        e = makeEntry({ direction, text, state, event_id: eid, client_message_id: cid, at: parseTime(m.sent_at), attachments });
      } else if (e.state === 'pending' || e.state === 'failed') {
        e.state = 'acked'; // in the log already: the ack for it may never come
        updateMark(e);
      }
      setEvent(e, eid);
      if (cid && direction === 'inbound') removeFromOutbox(cid);
      if (!seen.has(e)) { seen.add(e); ordered.push(e); }
    }
    // Replies older than the newest one already read were seen before too.
    let last = -1;
    ordered.forEach((e, i) => { if (e.state === 'read') last = i; });
    ordered.forEach((e, i) => { if (i < last && e.state === 'received') e.state = 'read'; });
    // History first, then what it does not know yet (pending, newer replies).
    const rest = entries.filter((e) => !seen.has(e));
    entries.splice(0, entries.length, ...ordered, ...rest);
    ui.list.setAttribute('aria-busy', 'true'); // re-ordering is not news for screen readers
    for (const e of entries) ui.list.appendChild(e.el);
    ui.list.setAttribute('aria-busy', 'false');
    scrollToEnd();
    markRead();
    updateBadge();
  }

  function onAck(f) {
    const id = f.client_message_id;
    if (typeof id !== 'string') return;
    let e = byClient.get(id);
    if (!e) {
      // Sent from another tab that shares our outbox: show it here too.
      const item = outbox().find((m) => m.id === id);
      if (item) {
        addEntry(e = makeEntry({
          direction: 'inbound', text: item.text, state: 'pending', client_message_id: id, at: item.at,
          attachments: files(item.attachments, false),
        }));
      }
    }
    removeFromOutbox(id);
    if (!e) return;
    e.state = 'acked';
    setEvent(e, f.event_id);
    updateMark(e);
  }

  function onReply(f) {
    if (typeof f.event_id !== 'string' || typeof f.text !== 'string') return;
    if (byEvent.has(f.event_id)) return; // other tabs and history repeat replies
    addEntry(makeEntry({ direction: 'outbound', text: f.text, state: 'received', event_id: f.event_id, at: parseTime(f.sent_at) }));
    markRead();
    updateBadge();
  }

  function onFrame(raw) {
    let f;
    try { f = JSON.parse(raw); } catch (_) { return; }
    if (!f || typeof f !== 'object') return;
    switch (f.type) {
      case 'welcome': return onWelcome(f);
      case 'history': return onHistory(f.messages);
      case 'ack': return onAck(f);
      case 'reply': return onReply(f);
      case 'contact': return onContact(f);
      case 'error':
        // Discreet: a line under the list that fades; details for developers.
        if (window.console) console.warn('[omnid-chat]', f.code, f.message);
        if (f.code === 'invalid_email') return onContactRefused();
        // Any other refusal while an address is being saved may be its
        // answer (storage down...): the form can be used again.
        if (contact.saving !== null && typeof f.client_message_id !== 'string') {
          contact.saving = null;
          renderContact();
        }
        giveUp(f);
        return showNotice(typeof f.message === 'string' ? f.message : String(f.code || 'error'));
      default: // unknown frames are ignored, so the channel can add some
    }
  }

  // ---- Connection -----------------------------------------------------------------
  let ws = null;
  let status = 'idle';
  let welcomed = false;
  let identityState = 'none';
  let attempt = 0;
  let retryTimer = 0;
  let welcomeTimer = 0;
  let sentHere = []; // message ids written on the current socket, for 1009

  function sendFrame(frame) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    try { ws.send(JSON.stringify(frame)); return true; } catch (_) { return false; }
  }

  function connect() {
    if (ws || status === 'offline') return;
    clearTimeout(retryTimer);
    retryTimer = 0;
    setStatus(attempt === 0 ? 'connecting' : 'reconnecting');
    let sock;
    try { sock = new WebSocket(socketUrl); } catch (_) { scheduleReconnect(0); return; }
    ws = sock;
    welcomed = false;
    sentHere = [];
    // No welcome within 15 s (a stuck proxy, a half-open socket): start over.
    welcomeTimer = setTimeout(() => { if (ws === sock) sock.close(4000, 'no welcome'); }, 15000);
    sock.addEventListener('open', () => {
      if (ws !== sock) return;
      const s = load();
      const hello = { type: 'hello', locale };
      if (typeof s.visitor_id === 'string' && typeof s.visitor_token === 'string') {
        hello.visitor_id = s.visitor_id;
        hello.visitor_token = s.visitor_token;
      }
      if (identity) hello.identity = identity;
      sendFrame(hello);
    });
    sock.addEventListener('message', (ev) => { if (ws === sock) onFrame(ev.data); });
    sock.addEventListener('close', (ev) => {
      if (ws !== sock) return;
      ws = null;
      welcomed = false;
      typingOn = false;
      contact.saving = null; // unanswered: the visitor may save it again
      clearTimeout(welcomeTimer);
      onClose(ev.code);
    });
  }

  function onClose(code) {
    if (code === 4001 || code === 4003) {
      // Retrying cannot help: the identity or the site itself is refused.
      setStatus('offline');
      showNotice(t('offline') + ' ' + t(code === 4001 ? 'refused' : 'origin'), true);
      return;
    }
    if (code === 1009) dropOversized();
    // Rate limited or too many tabs: go straight to the long waits.
    scheduleReconnect(code === 4008 || code === 4009 ? 5 : 0);
  }

  // A message the channel refused for good (too long, malformed, an
  // attachment it does not know: `unknown_attachment`) would be resent
  // forever from the outbox: it is marked failed and dropped. The retryable
  // codes (the log briefly unavailable, writing too fast) keep it.
  const RETRYABLE = ['storage_unavailable', 'state_unavailable', 'rate_limited'];
  function giveUp(f) {
    if (typeof f.client_message_id !== 'string' || RETRYABLE.indexOf(f.code) >= 0) return;
    const e = byClient.get(f.client_message_id);
    if (!e || e.state !== 'pending') return;
    e.state = 'failed';
    updateMark(e);
    removeFromOutbox(e.client_message_id);
  }

  // The channel closed on a frame over max_message_bytes. Resending it would
  // loop forever, so the largest message written on that socket is given up.
  function dropOversized() {
    const size = (e) => new TextEncoder().encode(e.text).length;
    const suspects = sentHere.map((id) => byClient.get(id)).filter((e) => e && e.state === 'pending');
    const worst = suspects.sort((a, b) => size(b) - size(a))[0];
    if (!worst) return;
    worst.state = 'failed';
    updateMark(worst);
    removeFromOutbox(worst.client_message_id);
    showNotice(t('tooBig'));
  }

  // Exponential backoff with "equal jitter": half the step fixed, half random,
  // so the first retry waits 0.5-1 s and the longest 7.5-15 s, and tabs that
  // lost the daemon together do not come back in lockstep.
  function scheduleReconnect(boost) {
    const step = Math.min(15000, 1000 * Math.pow(2, Math.min(attempt + boost, 10)));
    attempt++;
    setStatus('reconnecting');
    retryTimer = setTimeout(connect, step / 2 + Math.random() * (step / 2));
  }

  // ---- Start -----------------------------------------------------------------------
  function init() {
    buildUi();
    setStatus('idle');
    // Messages a previous page left unacknowledged are shown, and resent on welcome.
    for (const item of outbox()) {
      if (!byClient.has(item.id)) {
        addEntry(makeEntry({
          direction: 'inbound', text: item.text, state: 'pending', client_message_id: item.id, at: parseTime(item.at),
          attachments: files(item.attachments, false),
        }));
      }
    }
    // Connect only for a visitor who has chatted (replies may be waiting) or
    // has something to send: merely loading a page creates no visitor.
    const s = load();
    if (openAtLoad) open(true);
    else if (s.visitor_id || outbox().length) connect();

    window.addEventListener('online', () => { if (retryTimer) connect(); });
    document.addEventListener('visibilitychange', markRead);

    window.OmnidChatWidget = Object.freeze({
      open: () => open(),
      close,
      send: (text) => submit(text),
      messages: () => entries.map((e) => ({
        direction: e.direction, text: e.text, state: e.state, event_id: e.event_id,
        client_message_id: e.client_message_id, sent_at: new Date(e.at).toISOString(),
        attachments: e.attachments.map((a) => ({ name: a.name, media_type: a.media_type, size: a.size })),
      })),
      // The chosen files not sent yet, and the address replies go to.
      pendingFiles: () => pending.map((p) => ({ name: p.name, state: p.state, id: p.id })),
      contactEmail: () => contact.email,
      status: () => status,
      identity: () => identityState,
    });
  }

  if (document.body) init();
  else document.addEventListener('DOMContentLoaded', init);
})();
