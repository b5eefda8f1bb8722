"""Pictures: `figures` draws samples and predictions (`picture`: any member's array by its codec kind; shared
by preview, reconstruct and the pretraining figures); `preview` is `mmforge preview` (a dataset as a picture
and a self-contained HTML page).
"""
