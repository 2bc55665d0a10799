"""The `[roi]` and `[recognition]` sections: where to look and when to answer."""

from __future__ import annotations

from pydantic import Field, model_validator

from shelfsight.edge_app.core.config import StrictModel


class RoiConfig(StrictModel):
    """Region of interest as fractions of the frame; the default is the central area."""

    x: float = Field(0.15, ge=0, lt=1, description="Left edge, as a fraction of the frame's width")
    y: float = Field(0.05, ge=0, lt=1, description="Top edge, as a fraction of the frame's height")
    width: float = Field(0.7, gt=0, le=1, description="Width, as a fraction of the frame's width")
    height: float = Field(0.9, gt=0, le=1, description="Height, as a fraction of the frame's height")

    @model_validator(mode="after")
    def _inside_frame(self) -> "RoiConfig":
        if self.x + self.width > 1.0 + 1e-9 or self.y + self.height > 1.0 + 1e-9:
            raise ValueError("the region of interest must lie inside the frame (x + width <= 1, y + height <= 1)")
        return self

    @classmethod
    def full_frame(cls) -> "RoiConfig":
        return cls(x=0.0, y=0.0, width=1.0, height=1.0)


class RecognitionConfig(StrictModel):
    """Thresholds of the recognition pipeline (see edge_app.recognition.pipeline)."""

    verify: bool = Field(True, description="Geometric verification of the shortlist (the 'full' pipeline)")
    shortlist: int = Field(
        5, ge=1, le=50, description="Products of the embedding's shortlist verified with local features"
    )
    local_search: bool = Field(
        True, description="Also verify the products the visual-word index finds (catalogs with a vocabulary)"
    )
    local_shortlist: int = Field(8, ge=0, le=50, description="Products taken from the visual-word index")
    top_k: int = Field(5, ge=1, le=50, description="Products reported (the winner and its runners-up)")
    min_inliers: int = Field(
        20,
        ge=4,
        description="RANSAC inliers that make a match geometrically verified (chance reaches 13 with 1,000 features)",
    )
    ratio: float = Field(0.8, gt=0, lt=1, description="Lowe's ratio test on ORB descriptor distances")
    ransac_px: float = Field(
        6.0, gt=0, description="RANSAC reprojection threshold in query work-frame pixels (1% of the 640 px side)"
    )
    min_coverage: float = Field(0.08, ge=0, lt=1, description="Share of the reference the inliers must span")
    fast_inliers: int = Field(
        36,
        ge=4,
        description="Inliers of the top hit that no other candidate matches as well, enough to settle verification early",
    )
    feature_side: int = Field(640, ge=64, le=4096, description="Longest side of the ROI when extracting local features")
    orb_features: int = Field(1000, ge=50, le=4096, description="ORB features extracted from the query")
    query_fast_threshold: int = Field(
        10,
        ge=1,
        le=255,
        description="FAST corner threshold for the query's ORB features (references use 20): lower finds the "
        "corners a blurred or dim view still has",
    )
    max_references: int = Field(3, ge=1, description="Reference views tried per shortlisted product")
    overlap_local: bool = Field(
        True,
        description="Extract the query's local features on a second thread while the embedding runs (both release "
        "the GIL; bench_concurrency.py times it against doing one after the other)",
    )
    align: bool = Field(
        True,
        description="Embed the query again, rectified onto each verified candidate's reference by its homography, "
        "and score with that similarity where it is higher (one interpreter invoke per candidate aligned)",
    )
    align_candidates: int = Field(
        2, ge=1, le=10, description="Verified candidates aligned, best first (each costs one interpreter invoke)"
    )
    unknown_threshold: float | None = Field(
        None, description="Score below which the answer is 'not in catalog'; None: the catalog's calibrated value"
    )
    default_unknown_threshold: float = Field(0.5, description="Used when neither config nor catalog has one")
    accept_similarity: float = Field(
        0.97, description="A global match this similar (and clearly ahead) is accepted without verification"
    )
    accept_margin: float = Field(0.08, ge=0, description="How far ahead of the runner-up that global match must be")
    require_verification: bool = Field(
        True, description="When verification runs, an unconfirmed candidate needs accept_similarity to be announced"
    )
    empty_std: float = Field(6.0, ge=0, description="Grey-level spread of the ROI below which the view is empty")
    background_frames: int = Field(
        50,
        ge=0,
        description=(
            "Still, unrecognised frames in a row after which the view is learned as empty, before any is known "
            "(0: off); a view unlike the learned one takes 36 times as many, so a held product never becomes it"
        ),
    )
    background_diff: float = Field(6.0, gt=0, description="Grey-level difference that still counts as the background")
    vote_window: int = Field(
        5,
        ge=1,
        description=(
            "Frames the temporal vote looks at; an announced product stays until twice as many frames in a row "
            "miss it (a turned or lowered product does not flicker to 'not recognised' or 'empty')"
        ),
    )
    vote_min: int = Field(
        3,
        ge=1,
        description="Agreeing frames needed to make an announcement; one more replaces an announced product",
    )

    @model_validator(mode="after")
    def _votes_fit(self) -> "RecognitionConfig":
        if self.vote_min > self.vote_window:
            raise ValueError("vote_min cannot exceed vote_window")
        return self
