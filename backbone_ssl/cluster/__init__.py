"""Face clustering: kNN graph (faiss), clustering methods, scores against identities, contact
sheets (``backbone-ssl cluster``). One job per module: :mod:`.config`, :mod:`.graph`,
:mod:`.methods`, :mod:`.rank_order`, :mod:`.scores`, :mod:`.sheets`, :mod:`.labels`,
:mod:`.export`, :mod:`.run`."""
