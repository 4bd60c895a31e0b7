-- The product dimension: catalogue attributes for every SKU, for slices and the card.
with catalog as (

    select * from {{ ref('stg_catalog') }}

),

final as (

    select api_key, product_sku, category_path, top_category, price_bucket
    from catalog

)

select * from final
