# The default model's training recipe, sourced by train_default.sh and train_disjoint.sh so the
# shipped model and the product-disjoint check always train the same way.
#
# Stage 1 learns the embedding under the full kiosk-camera augmentation (any rotation, zoom-out
# onto clutter). Stage 2 starts from it with proxies at the products' mean embeddings, unfreezes
# two more backbone blocks and eases the geometric augmentation, so the last steps refine the
# embedding on views closer to how products are photographed instead of spending the model's
# capacity on the hardest distortions only.
#
# The iconic images (classes.csv) are listed six times: one web-shop shot per product is
# otherwise drowned by ~30 store photos, and kiosks are often stocked with exactly such shots.
#
# Each stage is skipped when its run directory holds a finished model; an interrupted stage resumes.

SS=${SS:-.venv/bin/shelfsight}

recipe_sources() {  # DATA_ROOT
  local data=$1
  SOURCES=(--data "$data/grocery-store/train.txt" --data "$data/grozi-120")
  for _ in 1 2 3 4 5 6; do SOURCES+=(--data "$data/grocery-store/classes.csv"); done
}

recipe_train() {  # DATA_ROOT RUN_DIR [extra train options, e.g. --exclude-products FILE]
  local data=$1 run=$2
  shift 2
  recipe_sources "$data"
  if [ ! -f "$run/stage1/model.keras" ]; then
    $SS -v train --run-dir "$run/stage1" "${SOURCES[@]}" "$@" \
      --input-size 224 --dim 256 --epochs 12 --steps-per-epoch 120 --batch-size 32 --seed 0
  fi
  if [ ! -f "$run/stage2/model.keras" ]; then
    $SS -v train --run-dir "$run/stage2" --init-from "$run/stage1" "${SOURCES[@]}" "$@" \
      --input-size 224 --dim 256 --epochs 10 --steps-per-epoch 150 --batch-size 32 --seed 1 \
      --learning-rate 2e-4 --train-from-block 2 \
      --augment rotate_prob=0.5 --augment 'zoom_out=[0.7,1.0]' --augment 'crop_scale=[0.45,1.0]'
  fi
}
