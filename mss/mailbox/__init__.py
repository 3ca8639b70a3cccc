"""The mailbox service shared by the web pages and the JSON API.

Reading: ``items`` finds a message of a mailbox (only through the reader's own rows);
``listing`` lists a folder with filters and pages; ``opening`` opens a message for its
reader (decrypt with their key, verify the signature, split the MIME), its attachments and
the documents inside IHE_XDM packages; ``marks`` moves and marks; ``journey`` is the Sent
view's journey per recipient. Writing (``compose``): a draft becomes an RFC 5322 message
submitted through ``mss.pipeline``; ``drafts`` keeps what is not sent yet, encrypted to its
writer. Opening a message asks ``mss.receipts.issuer`` for its ``displayed`` notification;
``index`` keeps the search tokens that make filters fast without storing metadata in clear, ``content`` holds
the decryption, verification and MIME splitting.
"""

from mss.errors import FilterError
from mss.mailbox.compose import (
    Draft,
    DraftInvalid,
    KeptAttachment,
    Problem,
    Upload,
    build_message,
    send,
    split_addresses,
)
from mss.mailbox.content import Attachment, Signature
from mss.mailbox.drafts import (
    DraftSummary,
    KeptDraft,
    discard_draft,
    draft_count,
    list_drafts,
    open_draft,
    save_draft,
    send_from_draft,
)
from mss.mailbox.items import ARCHIVE, FOLDERS, INBOX, SENT, Correspondent
from mss.mailbox.journey import RecipientJourney, Step, journey
from mss.mailbox.listing import Filters, Page, Summary, list_folder
from mss.mailbox.marks import mark_unread, move, unread_count
from mss.mailbox.opening import (
    AttachmentInfo,
    Opened,
    OpenedAttachment,
    XdmEntry,
    answer_read_receipt,
    embedded_file,
    embedded_pdf,
    open_attachment,
    open_message,
    xdm_document,
    xdm_entries,
)
from mss.store import MessageNotFound

__all__ = [
    "ARCHIVE",
    "FOLDERS",
    "INBOX",
    "SENT",
    "Attachment",
    "AttachmentInfo",
    "Correspondent",
    "Draft",
    "DraftInvalid",
    "DraftSummary",
    "FilterError",
    "Filters",
    "KeptAttachment",
    "KeptDraft",
    "Problem",
    "MessageNotFound",
    "Opened",
    "OpenedAttachment",
    "Page",
    "RecipientJourney",
    "Signature",
    "Step",
    "Summary",
    "Upload",
    "XdmEntry",
    "answer_read_receipt",
    "build_message",
    "embedded_file",
    "discard_draft",
    "draft_count",
    "embedded_pdf",
    "journey",
    "list_drafts",
    "list_folder",
    "mark_unread",
    "move",
    "open_attachment",
    "open_draft",
    "open_message",
    "save_draft",
    "send",
    "send_from_draft",
    "split_addresses",
    "unread_count",
    "xdm_document",
    "xdm_entries",
]
