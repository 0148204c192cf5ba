"""Search a collection of your own videos: index a folder with one frozen backbone and a small adapter, query it
by text, image or clip from Python (``Retriever``), the command line (``petvr index`` / ``petvr search``), over HTTP
and in a web page (``petvr serve``). See docs/search.md."""
from .collection import Collection, Hit, SearchResult
from .indexer import IndexMismatch, IndexReport, build_index
from .retriever import Retriever

__all__ = ["Collection", "Hit", "IndexMismatch", "IndexReport", "Retriever", "SearchResult", "build_index"]
